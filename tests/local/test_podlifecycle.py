"""podlifecycle.py's pure rules: which containers a pod spec makes, and which exits restart."""

from jobset_runtime.local.podlifecycle import ContainerKind, containers_of, should_restart


def test_containers_of_marks_init_containers_with_restart_policy_always_as_sidecars():
    main, inits = containers_of({"containers": [{"name": "a"}, {"name": "b"}],
                                 "initContainers": [{"name": "setup"}, {"name": "proxy", "restartPolicy": "Always"}]})
    assert [(c.name, c.kind) for c in main] == [("a", ContainerKind.MAIN), ("b", ContainerKind.MAIN)]
    assert [(c.name, c.kind) for c in inits] == [("setup", ContainerKind.INIT), ("proxy", ContainerKind.SIDECAR)]
    assert not any(c.running or c.started or c.restarts for c in main + inits)


def test_should_restart_follows_the_restart_policy_and_always_restarts_sidecars():
    # pkg/kubelet/container/helpers.go ShouldContainerBeRestarted
    for kind in (ContainerKind.MAIN, ContainerKind.INIT):
        assert should_restart(kind, "Always", 0) and should_restart(kind, "Always", 1)
        assert not should_restart(kind, "OnFailure", 0) and should_restart(kind, "OnFailure", 137)
        assert not should_restart(kind, "Never", 0) and not should_restart(kind, "Never", 1)
    assert all(should_restart(ContainerKind.SIDECAR, p, code) for p in ("Always", "OnFailure", "Never") for code in (0, 1))
