"""One rank of an SRPO update through verl's engine on CPU (srpo_verl/lab/srpo_update.py).

`python tests/cpu/srpo_update_probe.py MODEL OUT.pt MICRO_BATCH [TEACHER]` runs one rank; with
WORLD_SIZE=2 (RANK, MASTER_ADDR/PORT set by the caller) two copies form a gloo group and FSDP2
shards the model over them. `test_srpo_update.py` starts the ranks and compares the results.
Rank 0 saves the update, with the float64 reference when SRPO_PROBE_REFERENCE is set.
"""

import os
import sys

import torch

from srpo_verl.cpu.local import local_env
from srpo_verl.lab.srpo_update import engine_update, reference_trust_region, reference_update

if __name__ == "__main__":
    local_env()
    model_path, out_path, micro_batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
    result = engine_update(model_path, micro_batch, *(sys.argv[4:5] or ["ema"]))
    if os.environ["RANK"] == "0":
        result["reference"] = reference_update(model_path, result) if os.environ.get("SRPO_PROBE_REFERENCE") else None
        if "theta1" in result:
            result["reference_trust_region"] = reference_trust_region(model_path, result)
        torch.save(result, out_path)
