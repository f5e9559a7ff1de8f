"""Test-only transform: a chunk's number goes into its label, after a '/'."""

from taskgraph.transforms.base import TransformSequence

transforms = TransformSequence()


@transforms.add
def chunk_in_name(config, tasks):
    for task in tasks:
        chunk = task.get("attributes", {}).get("this_chunk")
        if chunk:
            task["name"] = f"{task['name']}/{chunk}"
        yield task
