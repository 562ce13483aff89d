"""The device a benchmark runs on, and waiting for it before reading a clock."""

from __future__ import annotations

import argparse

import torch

from tunegap.trial_data import pick_device


def device_or_exit(parser: argparse.ArgumentParser, name: str) -> torch.device:
    """`--device` as a torch device; a device that cannot be used exits 2 with one line."""
    try:
        return pick_device(name)
    except ValueError as err:
        parser.error(str(err))


def sync(device: torch.device) -> None:
    """Wait for the queued work (CUDA runs asynchronously), so a timing covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
