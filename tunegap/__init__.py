"""tunegap: map where the large-batch generalization gap closes.

Implements Hoffer, Hubara & Soudry, "Train longer, generalize better" (NeurIPS 2017):
Ghost Batch Normalization, learning-rate scaling and regime adaptation, run as Ray Tune
studies and logged to MLflow.
"""

__version__ = "0.1.0"
