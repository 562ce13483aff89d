"""The analysis of a study's results, torch-free: from trial records to the gap map.

- `schema`: the Parquet schema of `trials.parquet` and `epochs.parquet`, documented;
- `tables`: build those tables from trial records, write them atomically, read them back;
- `fits`: per-trial curve fits (ultra-slow diffusion, steps to a target accuracy);
- `verdict`: one row per cell (knob setting) with its gap to the small-batch baseline and a
  decision at a declared margin (closed, open or inconclusive; Holm over the map);
- `report`: the cells as text (markdown table, baseline sentence);
- `plots`: the cells and curves as matplotlib figures, saved as PNGs.
"""
