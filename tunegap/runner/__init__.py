"""Running a study on Ray Tune: the trainable, the Tuner, where trials run, their records,
progress lines, and `run_study` itself (with `--resume`)."""
