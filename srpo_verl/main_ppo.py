"""`python -m srpo_verl.main_ppo algorithm=srpo ...`: verl's own main_ppo with srpo_verl's config.

This is verl's entry point unchanged (its Hydra-decorated body is called as is); only the primary
config differs: verl's ppo_trainer plus the `algorithm` and `platform` groups of this package.
The configuration and the data files are checked here, in the driver, so a wrong key, a
contradictory setting or a malformed data row fails before Ray starts (docs/reliability.md).
"""

import os

import hydra

from srpo_verl import cpu
from srpo_verl.integration.checks import check_data_files, check_trainer_config


def prepare(config, *, check_data: bool = True) -> None:
    """Checks and process-level settings that must happen in the driver before Ray starts."""
    check_trainer_config(config)  # raises naming the bad key or value
    if check_data:
        check_data_files(config)  # raises naming the file, the field and the rows
    if config.get("srpo_verl", {}).get("platform", None) == "cpu":
        os.environ[cpu.ENV_VAR] = "cpu"
        cpu.activate_if_requested()


@hydra.main(config_path="config", config_name="srpo_trainer", version_base=None)
def main(config):
    prepare(config)  # before verl's trainer module is imported: the CPU platform must be set first
    from verl.trainer.main_ppo import main as verl_main

    verl_main.__wrapped__(config)


if __name__ == "__main__":
    main()
