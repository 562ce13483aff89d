"""The analysis of a study's results, torch-free: from trial records to the gap map.

- `schema`: the Parquet schema of `trials.parquet` and `epochs.parquet`, documented;
- `tables`: build those tables from trial records, write them atomically, read them back;
- `fits`: per-trial curve fits (ultra-slow diffusion, steps to a target accuracy);
- `decide`: the one home of judging: the rule (closed, open, at the margin, inconclusive at a
  declared margin), the planned looks of adaptive seeds, Holm over a map both ways, paired
  effects;
- `cells`: one row per cell (knob setting) with its gap to the small-batch baseline and its
  verdict; `effects`: paired comparisons between cells that share seeds;
- `report`: the cells as text (markdown table, baseline sentence);
- `plots`: the cells and curves as matplotlib figures, saved as PNGs.
"""
