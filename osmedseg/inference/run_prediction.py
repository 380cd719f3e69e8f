"""Predicting a folder of images: part splitting for array jobs, resume, worker threads, atomic outputs.

Each case goes through three steps: ``prepare`` (read, check, preprocess) in reader threads, ``run`` (the network)
in the main thread, and ``finish`` (export) with the write in writer threads. So while the network works on one case,
the next ones are read and preprocessed and the previous one is exported and written; at most one finished case
waits for its export while the next runs, which bounds the memory to two cases' outputs.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from osmedseg.dataset.cases import group_channel_files
from osmedseg.errors import OsmError
from osmedseg.io import Geometry, read_image, write_label
from osmedseg.utilities.atomic import remove_stale_temporaries, save_npz_atomic


class CasePredictor(Protocol):
    def check_channels(self, image: np.ndarray, name: str) -> None: ...

    def prepare(self, image: np.ndarray, geometry: Geometry, with_probabilities: bool = False) -> Any: ...

    def run(self, prepared: Any) -> Any: ...

    def finish(self, ran: Any) -> tuple[np.ndarray, np.ndarray | None]: ...


def select_cases(input_folder: str, file_ending: str, num_channels: int, num_parts: int = 1, part_id: int = 0
                 ) -> dict[str, list[str]]:
    """Cases of ``input_folder`` (``<case>_0000<ending>`` ...) that belong to part ``part_id`` of ``num_parts``."""
    if not os.path.isdir(input_folder):
        raise OsmError(f"{input_folder}: input folder not found")
    if not 0 <= part_id < num_parts:
        raise OsmError(f"-part_id must be in [0, {num_parts}), got {part_id}")
    cases = group_channel_files(input_folder, file_ending, num_channels)
    if not cases:
        raise OsmError(f"{input_folder}: no images named <case>_0000{file_ending}")
    ids = sorted(cases)[part_id::num_parts]
    return {case_id: cases[case_id] for case_id in ids}


def _prepare(files: list[str], predictor: CasePredictor, with_probabilities: bool) -> tuple[Any, Geometry]:
    image, geometry = read_image(files)
    predictor.check_channels(image, files[0])
    return predictor.prepare(image, geometry, with_probabilities), geometry


def _finish(predictor: CasePredictor, ran: Any, geometry: Geometry, output_file: str, probabilities_file: str
            ) -> None:
    segmentation, probabilities = predictor.finish(ran)
    if probabilities is not None:
        save_npz_atomic(probabilities_file, probabilities=probabilities.astype(np.float16))
    write_label(segmentation, output_file, geometry)


def predict_folder(predictor: CasePredictor, input_folder: str, output_folder: str, file_ending: str,
                   num_channels: int, num_parts: int = 1, part_id: int = 0, continue_prediction: bool = False,
                   save_probabilities: bool = False, num_readers: int = 2, num_writers: int = 2,
                   disable_pbar: bool = False) -> list[str]:
    """Segment every selected case and write ``<case><ending>`` into ``output_folder``; returns the cases written."""
    cases = select_cases(input_folder, file_ending, num_channels, num_parts, part_id)
    os.makedirs(output_folder, exist_ok=True)
    remove_stale_temporaries(output_folder)
    outputs = {c: os.path.join(output_folder, c + file_ending) for c in cases}
    todo = [c for c in cases if not (continue_prediction and os.path.isfile(outputs[c]))]
    if len(todo) < len(cases):
        print(f"{len(cases) - len(todo)} case(s) already predicted, skipped (--continue_prediction)")
    with ThreadPoolExecutor(max(1, num_readers)) as readers, ThreadPoolExecutor(max(1, num_writers)) as writers:
        def prepare(case_id: str) -> Future:
            return readers.submit(_prepare, cases[case_id], predictor, save_probabilities)

        pending = {c: prepare(c) for c in todo[: num_readers + 1]}
        writes: list[Future] = []
        for index, case_id in enumerate(tqdm(todo, desc="predict", disable=disable_pbar)):
            nxt = index + num_readers + 1
            if nxt < len(todo):
                pending[todo[nxt]] = prepare(todo[nxt])
            for future in writes[:-1]:  # one export may overlap this case, not more
                future.result()  # a failed write (e.g. a full disk) stops the run before the next case
            writes = writes[-1:]
            if writes and writes[0].done():
                writes.pop().result()
            start = time.time()
            prepared, geometry = pending.pop(case_id).result()
            ran = predictor.run(prepared)
            del prepared
            writes.append(writers.submit(_finish, predictor, ran, geometry, outputs[case_id],
                                         os.path.join(output_folder, f"{case_id}.npz")))
            del ran
            tqdm.write(f"{case_id}: {time.time() - start:.1f} s")
        for future in writes:
            future.result()
    return todo
