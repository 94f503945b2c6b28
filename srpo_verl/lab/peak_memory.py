"""Peak memory of a block of code, for the benchmark scripts.

    with PeakMemory(device) as m:
        work()
    m.extra  # bytes: peak during the block minus what was held when it began

On CUDA: torch's allocator statistics (exact). On CPU: the process's resident set, exact through
Linux's resettable high-water mark (VmHWM, reset by writing 5 to /proc/self/clear_refs), else
sampled every 0.5 ms in a background thread (torch ops release the GIL, so the sampler runs during them).
"""

from __future__ import annotations

import os
import threading
import time

import torch

GB = 1024**3


def rss() -> int:
    import psutil  # only for CPU measurements (a GPU machine may not have it)

    return psutil.Process(os.getpid()).memory_info().rss


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := current RSS
        return True
    except OSError:
        return False


class PeakMemory:
    def __init__(self, device: str | torch.device = "cpu"):
        self.cuda = torch.device(device).type == "cuda"
        self.exact = self.cuda or _reset_hwm()

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            self.start = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            return self
        self.start = self.peak = rss()
        if self.exact:
            _reset_hwm()
        else:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss())
            time.sleep(0.0005)

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        elif self.exact:
            with open("/proc/self/status") as f:
                hwm_kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
            self.peak = max(self.peak, hwm_kb * 1024, rss())
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, rss())
        self.extra = self.peak - self.start
