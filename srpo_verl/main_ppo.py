"""`python -m srpo_verl.main_ppo algorithm=srpo ...`: verl's own main_ppo with srpo_verl's config.

This is verl's entry point unchanged (its Hydra-decorated body is called as is); only the primary
config differs: verl's ppo_trainer plus the `algorithm` and `platform` groups of this package.
The configuration and the data files are checked here, in the driver, so a wrong key, a
contradictory setting or a malformed data row fails before Ray starts (docs/reliability.md).
"""

import os

import hydra
from omegaconf import OmegaConf, open_dict

from srpo_verl import cpu
from srpo_verl.integration import registrations
from srpo_verl.integration.config_checks import DRIVER_CHECKED_KEY, check_trainer_config
from srpo_verl.integration.data_checks import check_data_files

# Driver environment that Ray workers need. A local Ray started by this driver inherits the
# whole environment, but the workers of a cluster started beforehand (`ray start`, several
# nodes) inherit the environment of that `ray start` shell instead: verl's file logger path, the
# TensorBoard folder and W&B settings (read in the TaskRunner actor) and srpo_verl's own
# variables would be lost. Values that look like credentials are never forwarded: verl prints the
# runtime_env, and each node should hold its own (`wandb login`, HF_TOKEN set there).
FORWARDED_ENV = ("VERL_FILE_LOGGER_PATH", "TENSORBOARD_DIR", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME")
FORWARDED_PREFIXES = ("SRPO_VERL_", "WANDB_")
SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD")
# Paths a worker on another node or with another working directory must see as the driver meant them.
PATH_ENV = ("VERL_FILE_LOGGER_PATH", "TENSORBOARD_DIR")


def forwarded_env(environ=os.environ) -> dict[str, str]:
    """The variables of `environ` that the Ray workers get through runtime_env.env_vars."""
    out = {}
    for key, value in environ.items():
        if key in FORWARDED_ENV or key.startswith(FORWARDED_PREFIXES):
            if not any(word in key for word in SECRET_WORDS):
                out[key] = os.path.abspath(value) if key in PATH_ENV else value
    return out


def forward_env_to_workers(config, environ=os.environ) -> None:
    """Add `forwarded_env` to ray_kwargs.ray_init.runtime_env.env_vars; values the config sets win."""
    wanted = forwarded_env(environ)
    with open_dict(config):
        set_vars = OmegaConf.select(config, "ray_kwargs.ray_init.runtime_env.env_vars", default=None) or {}
        for key, value in wanted.items():
            if key not in set_vars:
                OmegaConf.update(config, f"ray_kwargs.ray_init.runtime_env.env_vars.{key}", value, force_add=True)


def use_cpu_router(config) -> None:
    """platform=cpu: the rollout load balancer that imports no verl (srpo_verl/cpu/router.py), unless
    the config names its own or asks for `rollout.full_determinism` (hash routing, which verl gives
    only its own balancer). A path, not a config-group value: verl reads the YAML file it names."""
    from srpo_verl.cpu import router

    rollout = "actor_rollout_ref.rollout"
    if OmegaConf.select(config, f"{rollout}.full_determinism", default=False):
        return
    if OmegaConf.select(config, f"{rollout}.router_config_path", default=None) is None:
        with open_dict(config):
            OmegaConf.update(config, f"{rollout}.router_config_path", router.CONFIG_PATH, force_add=True)


def prepare(config, *, check_data: bool = True) -> None:
    """Checks and process-level settings that must happen in the driver before Ray starts."""
    srpo = check_trainer_config(config)  # raises naming the bad key or value
    if srpo is not None and registrations.registration_error() is not None:
        # Plain verl keeps working after a failed registration (a WARNING); an SRPO launch cannot.
        raise RuntimeError(f"srpo_verl is not registered with verl: {registrations.registration_error()}")
    if check_data:
        check_data_files(config)  # raises naming the file, the field and the rows
        with open_dict(config):  # the SRPO trainer need not read them again
            OmegaConf.update(config, DRIVER_CHECKED_KEY, True, force_add=True)
    if config.get("srpo_verl", {}).get("platform", None) == "cpu":
        os.environ[cpu.ENV_VAR] = "cpu"
        cpu.activate_if_requested()
        use_cpu_router(config)
    forward_env_to_workers(config)


@hydra.main(config_path="config", config_name="srpo_trainer", version_base=None)
def main(config):
    prepare(config)  # before verl's trainer module is imported: the CPU platform must be set first
    from verl.trainer.main_ppo import main as verl_main

    verl_main.__wrapped__(config)


if __name__ == "__main__":
    main()
