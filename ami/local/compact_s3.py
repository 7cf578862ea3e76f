"""moto's record of each stored S3 object, made smaller: the emulator keeps one for every upload
and every output for as long as it runs.

Measured in-process (moto 5.2.5, CPython 3.11), a stored object cost about 3.5 KB of memory
besides its bytes (those are on disk), and 1.6 KB with the changes below
(`tests/ami/test_compact_s3.py` holds it under 2 KB):

- moto's `FakeKey` sets 35 attributes, more than the 30 whose names CPython shares between the
  instances of a class, so every object got a dictionary of its own (1.6 KB). `CompactKey`
  keeps them in slots (8 bytes each) instead; moto makes every key through the `FakeKey` name
  of its models module, which names this subclass.
- Its restore states, the same two transitions for every object, were a new list of tuples
  each (0.3 KB): one shared tuple.
- The bucket's name, the checksum algorithm and the content type, parsed anew from each
  request, and the names of its metadata, lowercased anew for each object, were copies of the
  same few strings: they are interned.
- Each object had a lock of its own, held only while its body is read: one lock serves them
  all (a body is read from its file in well under a millisecond).
- An object put without tags got an empty tag set under its ARN in the backend's tag index
  (0.4 KB): an object with no entry has no tags all the same, so the empty set is not kept.

One change saves time rather than memory: moto computes an object's ETag (the MD5 of its bytes)
on the first answer that shows it, which every put does, by reading the body back from its file;
`CompactKey` computes it from the bytes in hand as they are stored.

What S3 answers (get, head, list, copy, delete, metadata, content-type, ETag, ACL, tags) is
unchanged: the same attributes hold the same values, only stored differently.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import moto.s3.models
from moto.s3.models import FakeKey, S3Backend
from moto.utilities.utils import LowercaseDict, md5_hash

# ManagedState's attributes, then FakeKey's, as moto 5.2.5 sets them in `FakeKey.__init__`.
# One moto adds later goes to an instance dictionary, as before (a test watches for it).
KEY_ATTRIBUTES = (
    "_transitions",
    "_status",
    "_tick",
    "_time_progressed",
    "model_name",
    "name",
    "account_id",
    "region_name",
    "partition",
    "last_modified",
    "acl",
    "website_redirect_location",
    "_checksum_algorithm",
    "_storage_class",
    "_metadata",
    "_expiry",
    "_etag",
    "_version_id",
    "_is_versioned",
    "multipart",
    "_bucket_name",
    "_max_buffer_size",
    "_value_buffer",
    "disposed",
    "contentsize",
    "lock",
    "encryption",
    "kms_key_id",
    "bucket_key_enabled",
    "lock_mode",
    "lock_legal_status",
    "lock_until",
    "checksum_value",
    "checksum_type",
    "checksum_parts",
)

RESTORE_TRANSITIONS = ((None, "IN_PROGRESS"), ("IN_PROGRESS", "RESTORED"))
BODY_LOCK = threading.Lock()


def interned(value: Any) -> Any:
    """The one shared copy of a string (anything else as it is)."""
    return sys.intern(value) if type(value) is str else value


# Metadata whose values repeat from object to object.
REPEATED_VALUES = frozenset({"content-type", "content-encoding", "content-language"})


class InternedNames(LowercaseDict):
    """moto's metadata dictionary (names lowercased) with its names and repeated values
    interned, and no instance dictionary of its own."""

    __slots__ = ("store",)

    def __setitem__(self, key: str, value: Any) -> None:
        name = self._keytransform(key)
        self.store[name] = interned(value) if name in REPEATED_VALUES else value

    def _keytransform(self, key: str) -> str:
        return sys.intern(key.lower())


class InternedAttribute:
    """An attribute kept interned, in the slot of its name with an underscore before it."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = f"_{name}"

    def __get__(self, key: Any, owner: type | None = None) -> Any:
        return self if key is None else getattr(key, self.slot)

    def __set__(self, key: Any, value: Any) -> None:
        setattr(key, self.slot, interned(value))


class CompactKey(FakeKey):
    """A `FakeKey` whose attributes are in slots, its repeated values shared."""

    __slots__ = KEY_ATTRIBUTES

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._transitions = RESTORE_TRANSITIONS
        self._metadata = InternedNames(self._metadata)
        self.lock = BODY_LOCK

    @FakeKey.value.setter
    def value(self, new_value: bytes | str) -> None:
        FakeKey.value.fset(self, new_value)
        if self._etag is None:  # a given ETag (a multipart upload's) stays
            if isinstance(new_value, str):
                new_value = new_value.encode(moto.s3.models.DEFAULT_TEXT_ENCODING)
            self._etag = md5_hash(new_value).hexdigest()

    # Set by moto from each request's text: one copy of each distinct value.
    bucket_name = InternedAttribute()
    checksum_algorithm = InternedAttribute()

    # `FakeKey`'s own pickling (moto deep-copies keys to list versions) reads and writes the
    # instance dictionary; these do the same with the slots.
    def __getstate__(self) -> dict[str, Any]:
        # The default state: (the instance dictionary or None, the slots); unlike reading
        # `__dict__`, it does not give the key a dictionary.
        extra, slots = object.__getstate__(self)
        state = {**(extra or {}), **slots}
        try:
            state["value"] = self.value
        except ValueError:  # a deleted key's body is closed, as in `FakeKey.__getstate__`
            state["value"] = ""
        del state["_value_buffer"]
        del state["lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            if name != "value":
                setattr(self, name, value)
        self._value_buffer = moto.s3.models.tempfile.SpooledTemporaryFile(
            max_size=self._max_buffer_size
        )
        self.lock = BODY_LOCK
        self.value = state["value"]


def put_object_tagging_keeping_no_empty_set(
    self: S3Backend, key: FakeKey, tags: dict[str, str] | None
) -> FakeKey:
    """`S3Backend.put_object_tagging`, without an entry in the tag index for no tags."""
    tagged = ORIGINAL_PUT_OBJECT_TAGGING(self, key, tags)
    arn = key.arn
    if arn in self.tagger.tags and not self.tagger.tags[arn]:
        self.tagger.delete_all_tags_for_resource(arn)
    return tagged


ORIGINAL_PUT_OBJECT_TAGGING = S3Backend.put_object_tagging


def install() -> None:
    """Make this process's moto keep every S3 object it stores in a `CompactKey`."""
    moto.s3.models.FakeKey = CompactKey
    S3Backend.put_object_tagging = put_object_tagging_keeping_no_empty_set
