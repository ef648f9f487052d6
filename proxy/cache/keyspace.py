"""The Redis key scheme. Pure functions of the prefix, the id, the version and the variant.

Every key of one annotation carries the hash tag ``{a:<id>}``, so they share one Redis Cluster slot and the
scripts that touch several of them stay valid on a cluster::

    <prefix>{a:42}:latest                 newest known version (zero-padded microseconds) of annotation 42
    <prefix>{a:42}:v:<version>:plain      that version's body, as Label Studio renders it
    <prefix>{a:42}:v:<version>:expand     the same version with ?expand=completed_by
    <prefix>{a:42}:missing                Label Studio answered 404: when the fetch that saw it began
    <prefix>{a:42}:claim:plain            held by the one replica fetching that variant (claims)
    <prefix>{a:42}:claim:plain:waiting    set while another replica waits for that fetch's result
    <prefix>{t:7}:annotations             set of cached annotation ids of task 7 (for TASKS_DELETED)
    <prefix>{t:7}:deleted                 task 7 was deleted: a late write of one of its annotations is refused

A deleted annotation's 404 marker holds :data:`FENCE`, a time no fetch reaches, so no write succeeds for it
until the marker expires.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.cache.base import Variant

VERSION_WIDTH = 20  # digits: versions compare as strings inside Lua, where numbers are doubles
FENCE = 10**VERSION_WIDTH - 1  # later than any time or updated_at in microseconds


def version_token(version: int) -> str:
    """A version as a fixed-width string, so lexical order is numeric order."""
    if version < 0:
        raise ValueError("versions are non-negative")
    return f"{version:0{VERSION_WIDTH}d}"


@dataclass(frozen=True, slots=True)
class KeyScheme:
    prefix: str

    def tag(self, annotation_id: int) -> str:
        return f"{self.prefix}{{a:{annotation_id}}}"

    def pointer(self, annotation_id: int) -> str:
        return f"{self.tag(annotation_id)}:latest"

    def missing(self, annotation_id: int) -> str:
        return f"{self.tag(annotation_id)}:missing"

    def version_prefix(self, annotation_id: int) -> str:
        return f"{self.tag(annotation_id)}:v:"

    def version(self, annotation_id: int, version: int, variant: Variant) -> str:
        return f"{self.version_prefix(annotation_id)}{version_token(version)}:{variant.value}"

    def claim(self, annotation_id: int, variant: Variant) -> str:
        """Held by the one replica fetching this variant from Label Studio (see AnnotationStore.claim)."""
        return f"{self.tag(annotation_id)}:claim:{variant.value}"

    def claim_waiters(self, annotation_id: int, variant: Variant) -> str:
        """Set while a replica waits for the claim's holder: its write then announces the result (CLAIM_SCRIPT)."""
        return f"{self.claim(annotation_id, variant)}:waiting"

    @property
    def changes(self) -> str:
        """The pub/sub channel on which every write that changed an annotation announces its id."""
        return f"{self.prefix}changes"

    def task(self, task_id: int) -> str:
        return f"{self.prefix}{{t:{task_id}}}:annotations"

    def task_deleted(self, task_id: int) -> str:
        return f"{self.prefix}{{t:{task_id}}}:deleted"
