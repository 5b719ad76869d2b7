"""A request's answer across its images: per property the verified value wins, then the first image in input
order that has one; evidence entries name their image; ``conflicts`` lists each image's value where they differ.

>>> from sight.schemas import Answer
>>> a = Answer(fields={"serial": "SN-1"}, evidence={"serial": []}, verified={"serial": None})
>>> b = Answer(fields={"serial": "SN-2"}, evidence={"serial": []}, verified={"serial": True})
>>> merged, text = merge([(0, "a.jpg", a), (1, "b.jpg", b)])
>>> merged.fields, merged.verified, [c.value for c in merged.conflicts["serial"]]
({'serial': 'SN-2'}, {'serial': True}, ['SN-1', 'SN-2'])
>>> text
'serial: SN-2 (b.jpg, verified)'
>>> merge([(0, "a.jpg", Answer(fields={"serial": None}, evidence={"serial": []}, verified={"serial": None}))])[1]
'serial: not found'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sight.answers.paths import put_at, value_at
from sight.schemas import Answer, Conflict, MergedAnswer

NOT_FOUND = "not found"


def merge(answers: Sequence[tuple[int, str | None, Answer]]) -> tuple[MergedAnswer, str | None]:
    """``answers``: (index, filename, answer) of the items that asked for a schema. Returns the merged answer
    and the request's ``answer`` text: each property's value and the image it came from, or "not found"."""
    if not answers:
        return MergedAnswer(), None
    ordered = sorted(answers, key=lambda a: a[0])
    fields: dict[str, Any] = {}
    evidence: dict[str, list[Any]] = {}
    verified: dict[str, bool | None] = {}
    conflicts: dict[str, list[Conflict]] = {}
    paths: dict[str, None] = {}
    said: list[str] = []
    for _index, _name, answer in ordered:
        paths.update(dict.fromkeys(answer.verified))
    leaves = [(index, name, answer, {path: value_at(answer.fields, path) for path in answer.verified})
              for index, name, answer in ordered]
    for path in paths:
        held = [(index, name, answer, values[path]) for index, name, answer, values in leaves
                if values.get(path) is not None]
        put_at(fields, path, None)
        evidence[path], verified[path] = [], None
        if not held:
            said.append(f"{path}: {NOT_FOUND}")
            continue
        index, name, answer, value = next((h for h in held if h[2].verified.get(path)), held[0])
        put_at(fields, path, value)
        evidence[path] = [e.model_copy(update={"index": index, "filename": name}) for e in answer.evidence[path]]
        verified[path] = answer.verified.get(path)
        state = "" if verified[path] is None else ", verified" if verified[path] else ", not verified"
        said.append(f"{path}: {value} ({name or f'image {index}'}{state})")
        if len({repr(h[3]) for h in held}) > 1:
            conflicts[path] = [Conflict(index=i, filename=n, value=v, verified=a.verified.get(path))
                               for i, n, a, v in held]
    return MergedAnswer(fields=fields, evidence=evidence, verified=verified, conflicts=conflicts), "; ".join(said)
