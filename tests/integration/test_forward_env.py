"""main_ppo forwards the driver's logging and srpo_verl variables to Ray workers (runtime_env), so
a cluster started beforehand with `ray start` sees them; credentials are never forwarded."""

from omegaconf import OmegaConf

from srpo_verl.main_ppo import forward_env_to_workers, forwarded_env


def struct(config: dict):
    config = OmegaConf.create(config)
    OmegaConf.set_struct(config, True)  # as Hydra hands it over
    return config


def test_logger_paths_and_our_variables_are_forwarded_as_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = {
        "VERL_FILE_LOGGER_PATH": "logs/metrics.jsonl",
        "TENSORBOARD_DIR": "/abs/tb",
        "SRPO_VERL_PLATFORM": "cpu",
        "WANDB_PROJECT": "srpo",
        "PATH": "/usr/bin",
    }
    assert forwarded_env(env) == {
        "VERL_FILE_LOGGER_PATH": str(tmp_path / "logs" / "metrics.jsonl"),
        "TENSORBOARD_DIR": "/abs/tb",
        "SRPO_VERL_PLATFORM": "cpu",
        "WANDB_PROJECT": "srpo",
    }


def test_credentials_are_not_forwarded():
    env = {"WANDB_API_KEY": "k", "SRPO_VERL_TOKEN": "t", "WANDB_ENTITY": "team"}
    assert forwarded_env(env) == {"WANDB_ENTITY": "team"}


def test_runtime_env_gets_them_and_the_config_wins():
    config = struct(
        {"ray_kwargs": {"ray_init": {"num_cpus": None, "runtime_env": {"env_vars": {"WANDB_PROJECT": "mine"}}}}}
    )
    forward_env_to_workers(config, {"WANDB_PROJECT": "env", "VERL_FILE_LOGGER_PATH": "/m.jsonl"})
    assert OmegaConf.to_container(config.ray_kwargs.ray_init.runtime_env.env_vars) == {
        "WANDB_PROJECT": "mine",
        "VERL_FILE_LOGGER_PATH": "/m.jsonl",
    }


def test_a_config_without_ray_kwargs_gets_the_block():
    config = struct({"trainer": {}})
    forward_env_to_workers(config, {"VERL_FILE_LOGGER_PATH": "/m.jsonl"})
    assert config.ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH == "/m.jsonl"
