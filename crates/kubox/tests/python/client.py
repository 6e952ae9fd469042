"""The Python `kubernetes` client against a kubox server: list, create,
patch, watch and delete. Run by tests/api_clients.rs with the kubeconfig path
as the only argument; exits non-zero on the first failed check."""

import sys
import threading

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException


def main(kubeconfig):
    config.load_kube_config(config_file=kubeconfig)
    core = client.CoreV1Api()
    apps = client.AppsV1Api()

    names = sorted(ns.metadata.name for ns in core.list_namespace().items)
    assert names == ["default", "kube-node-lease", "kube-public", "kube-system"], names

    seen = []
    # From a listed resourceVersion, so the watch sees every change after it
    # however late its request reaches the server.
    since = core.list_namespaced_config_map("default").metadata.resource_version

    def follow():
        w = watch.Watch()
        stream = w.stream(
            core.list_namespaced_config_map, "default", resource_version=since, timeout_seconds=20
        )
        for event in stream:
            seen.append((event["type"], event["object"].metadata.name))
            if event["type"] == "DELETED":
                w.stop()

    watcher = threading.Thread(target=follow)
    watcher.start()

    cm = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="py", labels={"from": "python"}), data={"a": "1"})
    created = core.create_namespaced_config_map("default", cm)
    assert created.metadata.uid and created.metadata.resource_version, created.metadata

    patched = core.patch_namespaced_config_map("py", "default", {"data": {"b": "2"}})
    assert patched.data == {"a": "1", "b": "2"}, patched.data

    listed = core.list_namespaced_config_map("default", label_selector="from=python")
    assert [c.metadata.name for c in listed.items] == ["py"], listed.items

    dep = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="web"),
        spec=client.V1DeploymentSpec(
            replicas=2,
            selector=client.V1LabelSelector(match_labels={"app": "web"}),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={"app": "web"}),
                spec=client.V1PodSpec(containers=[client.V1Container(name="web", image="busybox:1.36")]),
            ),
        ),
    )
    made = apps.create_namespaced_deployment("default", dep)
    assert made.spec.strategy.type == "RollingUpdate", made.spec.strategy
    assert made.spec.template.spec.restart_policy == "Always"

    try:
        core.read_namespaced_config_map("missing", "default")
        raise AssertionError("reading a missing ConfigMap succeeded")
    except ApiException as e:
        assert e.status == 404, e.status

    core.delete_namespaced_config_map("py", "default")
    watcher.join(timeout=30)
    assert ("ADDED", "py") in seen and ("MODIFIED", "py") in seen and ("DELETED", "py") in seen, seen
    print("python client ok")


if __name__ == "__main__":
    main(sys.argv[1])
