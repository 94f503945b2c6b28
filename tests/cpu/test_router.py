"""platform=cpu's rollout load balancer (srpo_verl/cpu/router.py): verl's sticky + least-in-flight rule."""

import yaml

from srpo_verl.cpu import router


def test_new_requests_go_to_the_least_loaded_server_and_stay_there():
    lb = router.LocalLoadBalancer({"a": "handle_a", "b": "handle_b"})
    first = lb.acquire_server("r1")
    second = lb.acquire_server("r2")
    assert {first[0], second[0]} == {"a", "b"}  # the busy one is avoided
    assert lb.acquire_server("r1") == first  # sticky, while still in flight
    lb.release_server(first[0])
    lb.release_server(first[0])
    assert lb.get_status()["servers"] == {first[0]: 0, second[0]: 1}
    assert lb.acquire_server("r3")[0] == first[0]  # least in flight again
    lb.release_server("unknown")  # ignored, as verl's does
    assert lb.require_acquire_fields() == [] and lb.require_release_fields() == []


def test_the_shipped_yaml_names_this_class():
    with open(router.CONFIG_PATH) as f:
        assert yaml.safe_load(f)["router_class"] == "srpo_verl.cpu.router.LocalLoadBalancer"


def test_platform_cpu_launch_uses_it_unless_the_config_names_another():
    from omegaconf import OmegaConf

    from srpo_verl.main_ppo import use_cpu_router

    config = OmegaConf.create({"actor_rollout_ref": {"rollout": {"router_config_path": None}}})
    use_cpu_router(config)
    assert config.actor_rollout_ref.rollout.router_config_path == router.CONFIG_PATH
    own = OmegaConf.create({"actor_rollout_ref": {"rollout": {"router_config_path": "/my/router.yaml"}}})
    use_cpu_router(own)
    assert own.actor_rollout_ref.rollout.router_config_path == "/my/router.yaml"
    # Hash routing is verl's balancer's alone: it stays.
    hashed = OmegaConf.create(
        {"actor_rollout_ref": {"rollout": {"router_config_path": None, "full_determinism": True}}}
    )
    use_cpu_router(hashed)
    assert hashed.actor_rollout_ref.rollout.router_config_path is None
