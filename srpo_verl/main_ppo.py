"""`python -m srpo_verl.main_ppo algorithm=srpo ...`: verl's own main_ppo with srpo_verl's config.

This is verl's entry point unchanged (its Hydra-decorated body is called as is); only the primary
config differs: verl's ppo_trainer plus the `algorithm` and `platform` groups of this package.
The SRPO block is validated here, in the driver, so a wrong key fails before Ray starts.
"""

import os

import hydra

from srpo_verl import cpu
from srpo_verl.algo_config import srpo_config_of


def prepare(config) -> None:
    """Checks and process-level settings that must happen in the driver before Ray starts."""
    srpo_config_of(config)  # raises naming the bad key or value
    if config.get("srpo_verl", {}).get("platform", None) == "cpu":
        os.environ[cpu.ENV_VAR] = "cpu"
        cpu.activate_if_requested()


@hydra.main(config_path="config", config_name="srpo_trainer", version_base=None)
def main(config):
    from verl.trainer.main_ppo import main as verl_main

    prepare(config)
    verl_main.__wrapped__(config)


if __name__ == "__main__":
    main()
