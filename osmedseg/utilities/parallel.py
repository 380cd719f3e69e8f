"""Map a function over cases in worker processes with a progress bar."""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, Sequence

from acvl_utils.miscellaneous.ptqdm import ptqdm
from tqdm import tqdm


def map_cases(function: Callable[..., Any], items: Sequence[Any], num_processes: int, desc: str,
              disable_pbar: bool = False, **kwargs: Any) -> list[Any]:
    """``[function(item, **kwargs) for item in items]``, in ``num_processes`` workers when more than one.

    Results keep the order of ``items``; an exception in a worker propagates to the caller. Workers use one torch
    thread each.
    """
    if num_processes <= 1 or len(items) <= 1:
        return [function(item, **kwargs) for item in tqdm(items, desc=desc, disable=disable_pbar)]
    return ptqdm(partial(_single_threaded, target=function), list(items), min(num_processes, len(items)), desc=desc,
                 disable=disable_pbar, **kwargs)


def _single_threaded(item: Any, target: Callable[..., Any], **kwargs: Any) -> Any:
    """Run in a worker with one torch thread: N workers x N threads on N cores is many times slower."""
    import torch

    torch.set_num_threads(1)
    return target(item, **kwargs)
