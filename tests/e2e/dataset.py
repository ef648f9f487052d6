"""The e2e data set: a project, tasks and annotations of several shapes, created in a real Label Studio."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.e2e.label_studio import LabelStudio

LABEL_CONFIG = """<View>
  <Text name="text" value="$text"/>
  <Choices name="sentiment" toName="text"><Choice value="Positive"/><Choice value="Negative"/></Choices>
  <Labels name="label" toName="text"><Label value="PER"/><Label value="ORG"/></Labels>
</View>"""

TEXTS = [
    "Ada Lovelace wrote the first program.",
    "Grace Hopper worked on COBOL at Remington Rand.",
    "Nothing to see here.",
    "Ünïcödé text — with “quotes” and a \u2028 line separator.",
    "A long one. " * 40,
]


def choice(value: str) -> dict[str, Any]:
    return {"type": "choices", "from_name": "sentiment", "to_name": "text", "value": {"choices": [value]}}


def span(start: int, end: int, text: str, label: str) -> dict[str, Any]:
    value = {"start": start, "end": end, "text": text, "labels": [label]}
    return {"type": "labels", "from_name": "label", "to_name": "text", "value": value}


@dataclass
class Dataset:
    project: int
    tasks: list[int]
    annotations: list[int] = field(default_factory=list)


def create_dataset(studio: LabelStudio, title: str) -> Dataset:
    status, project = studio.api("POST", "/api/projects/", {"title": title, "label_config": LABEL_CONFIG})
    assert status == 201, project
    status, imported = studio.api("POST", f"/api/projects/{project['id']}/import", [{"text": t} for t in TEXTS])
    assert status == 201, imported
    status, listed = studio.api("GET", f"/api/tasks/?project={project['id']}&page_size=100")
    assert status == 200, listed
    tasks = sorted(task["id"] for task in (listed["tasks"] if isinstance(listed, dict) else listed))
    dataset = Dataset(project["id"], tasks)
    shapes: list[tuple[int, dict[str, Any]]] = [
        (tasks[0], {"result": [choice("Positive")], "lead_time": 3.5}),
        (tasks[1], {"result": [span(0, 12, "Grace Hopper", "PER"), span(31, 45, "Remington Rand", "ORG")]}),
        (tasks[2], {"result": [], "was_cancelled": True}),
        (tasks[3], {"result": [choice("Negative")], "ground_truth": True, "lead_time": 12.25}),
        (tasks[4], {"result": [span(12 * i, 12 * i + 8, "A long o", "ORG") for i in range(40)], "lead_time": 60.0}),
        (tasks[0], {"result": [choice("Negative")]}),  # a second annotation of one task
    ]
    for task, body in shapes:
        status, annotation = studio.api("POST", f"/api/tasks/{task}/annotations/", body)
        assert status == 201, annotation
        dataset.annotations.append(annotation["id"])
    return dataset
