"""The Python `kubernetes` client's events.k8s.io/v1 API against a kubox
server: events it creates are core/v1 Events too, and core/v1 Events read
as events.k8s.io/v1 ones. Run by tests/api_versions.rs with the kubeconfig
path as the only argument; exits non-zero on the first failed check."""

import datetime
import sys
import threading

from kubernetes import client, config, watch


def main(kubeconfig):
    config.load_kube_config(config_file=kubeconfig)
    core = client.CoreV1Api()
    events = client.EventsV1Api()
    ns = "py-events"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))

    since = events.list_namespaced_event(ns).metadata.resource_version
    seen = []

    def follow():
        w = watch.Watch()
        for e in w.stream(events.list_namespaced_event, ns, resource_version=since, timeout_seconds=20):
            seen.append((e["type"], e["object"].note))
            if e["type"] == "DELETED":
                w.stop()

    watcher = threading.Thread(target=follow)
    watcher.start()

    now = datetime.datetime.now(datetime.timezone.utc)
    created = events.create_namespaced_event(
        ns,
        client.EventsV1Event(
            metadata=client.V1ObjectMeta(name="py"),
            event_time=now,
            reason="Pulled",
            note="pulled by python",
            type="Normal",
            action="Pull",
            reporting_controller="example.com/python",
            reporting_instance="py-1",
            regarding=client.V1ObjectReference(kind="Pod", name="py-pod", namespace=ns),
        ),
    )
    assert created.api_version == "events.k8s.io/v1", created.api_version
    assert created.note == "pulled by python" and created.regarding.name == "py-pod", created

    as_core = core.read_namespaced_event("py", ns)
    assert as_core.message == "pulled by python", as_core.message
    assert as_core.involved_object.name == "py-pod", as_core.involved_object
    assert as_core.reporting_component == "example.com/python", as_core.reporting_component

    patched = events.patch_namespaced_event(
        "py", ns, {"note": "pulled again", "series": {"count": 2, "lastObservedTime": now.isoformat()}}
    )
    assert patched.note == "pulled again" and patched.series.count == 2, patched
    assert core.read_namespaced_event("py", ns).series.count == 2

    listed = events.list_namespaced_event(ns, field_selector="regarding.name=py-pod").items
    assert [e.metadata.name for e in listed] == ["py"], listed
    assert events.list_namespaced_event(ns, field_selector="regarding.name=other").items == []

    events.delete_namespaced_event("py", ns)
    watcher.join(timeout=30)
    assert seen == [("ADDED", "pulled by python"), ("MODIFIED", "pulled again"), ("DELETED", "pulled again")], seen
    print("python events ok")


if __name__ == "__main__":
    main(sys.argv[1])
