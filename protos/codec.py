"""Codecs between the Python shapes of a study and the wire contract inside Flower records.

Both sides encode and decode only here, through the generated classes of
``protos/rehealth_v1.proto``: the coordinator's query (a :class:`shared.protocol.StudyQuery`,
still validated by pydantic on arrival) travels as a serialized ``rehealth.v1.StudyQuery`` in a
``ConfigRecord``; a node's answers (``{op: {key: array}}``) and metadata as a
``rehealth.v1.StudyReply``, one typed message per operation whose fields are the arrays, float64
exact. Conversion is by field name, both ways: a field one side has and the contract lacks
raises :class:`ContractError` instead of vanishing, so a rename on one side only fails at once.

Both sides check the version first (field 1 of every message): a node refuses a query of
another protocol version, and a coordinator a reply of another, naming both versions
(:class:`ProtocolMismatch`).

Under SecAgg+ a node's arrays travel as one masked vector (Flower sums ArrayRecords); the order
of that vector is the contract's field order (:func:`secure_layout`), and the node's reply
travels beside it with the tensors' shapes only (:func:`encode_secure_input`,
:func:`decode_secure_sum`).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from flwr.app import ConfigRecord, RecordDict
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtoMessage

from protos import rehealth_v1_pb2 as pb
from shared.errors import QueryRefused
from shared.protocol import PROTOCOL_VERSION, RiskJob, StudyQuery

__all__ = [
    "QUERY_ENTRY",
    "RECORD",
    "REPLY_ENTRY",
    "RISK_ENTRY",
    "ContractError",
    "ProtocolMismatch",
    "decode_answer",
    "decode_query",
    "decode_risk",
    "decode_secure_sum",
    "encode_answer",
    "encode_query",
    "encode_risk",
    "encode_secure_input",
    "query_entry",
    "secure_layout",
]

#: The record every contract message travels in (the proto package's name), and its entries
#: (each message's full name): all derived from the descriptor, none written twice.
RECORD: str = pb.DESCRIPTOR.package
QUERY_ENTRY: str = pb.StudyQuery.DESCRIPTOR.full_name
REPLY_ENTRY: str = pb.StudyReply.DESCRIPTOR.full_name
RISK_ENTRY: str = pb.RiskRequest.DESCRIPTOR.full_name


class ContractError(ValueError):
    """A value has no place in the wire contract (a field, operation, array or enum value the
    .proto does not name), or a message is not one of the contract's."""


class ProtocolMismatch(QueryRefused):
    """The other side speaks another protocol version: nothing of the message is read."""

    def __init__(self, message: str, *, theirs: int, ours: int = PROTOCOL_VERSION):
        super().__init__(message)
        self.theirs, self.ours = theirs, ours


# -- generic conversion: Python dicts (pydantic dumps) <-> messages, by field name --------------


def _enum_prefix(enum: EnumDescriptor) -> str:
    """``ColumnKind`` -> ``COLUMN_KIND_`` (the proto style: values carry their enum's name)."""
    return "".join("_" + c if c.isupper() and i else c for i, c in enumerate(enum.name)).upper() + "_"


def _oneof(desc: Descriptor):
    """The message's real oneof (a discriminated union), if any; proto3 ``optional`` fields'
    synthetic oneofs are not."""
    real = [o for o in desc.oneofs if not (len(o.fields) == 1 and o.name == "_" + o.fields[0].name)]
    return real[0] if real else None


def _fill(msg: ProtoMessage, data: Mapping[str, Any]) -> ProtoMessage:
    """Set ``msg``'s fields from ``data`` (a pydantic ``model_dump``): None leaves a field with
    presence unset; a union ``{"op": name, **fields}`` fills the oneof's field ``name``."""
    desc = msg.DESCRIPTOR
    union = _oneof(desc)
    if union is not None and union.name in data:
        chosen = data[union.name]
        if chosen not in {f.name for f in union.fields}:
            raise ContractError(f"{desc.full_name}: unknown {union.name} {chosen!r}")
        sub = getattr(msg, chosen)
        sub.SetInParent()
        _fill(sub, {k: v for k, v in data.items() if k != union.name})
        return msg
    for key, value in data.items():
        fd = desc.fields_by_name.get(key)
        if fd is None:
            raise ContractError(f"{desc.full_name} has no field {key!r}")
        if value is None:
            if fd.has_presence:
                continue
            raise ContractError(f"{desc.full_name}.{key} cannot be None")
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            if fd.is_repeated:
                for item in value:
                    _fill(getattr(msg, key).add(), item)
            else:
                getattr(msg, key).SetInParent()
                _fill(getattr(msg, key), value)
        elif fd.type == FieldDescriptor.TYPE_ENUM:
            if fd.is_repeated:
                getattr(msg, key).extend(_enum_number(fd.enum_type, v) for v in value)
            else:
                setattr(msg, key, _enum_number(fd.enum_type, value))
        elif fd.is_repeated:
            getattr(msg, key).extend(value)
        else:
            try:
                setattr(msg, key, value)
            except (TypeError, ValueError) as e:
                raise ContractError(f"{desc.full_name}.{key}: {e}") from None
    return msg


def _enum_number(enum: EnumDescriptor, value: str) -> int:
    found = enum.values_by_name.get(_enum_prefix(enum) + str(value).upper())
    if found is None or found.number == 0:
        raise ContractError(f"{enum.full_name} has no value {value!r}")
    return found.number


def _enum_name(enum: EnumDescriptor, number: int) -> str:
    found = enum.values_by_number.get(number)
    return found.name[len(_enum_prefix(enum)) :].lower() if found is not None else str(number)


def _read(msg: ProtoMessage) -> dict[str, Any]:
    """Inverse of :func:`_fill`: every field without presence, every present one with it."""
    desc = msg.DESCRIPTOR
    union = _oneof(desc)
    if union is not None:
        chosen = msg.WhichOneof(union.name)
        return {} if chosen is None else {union.name: chosen, **_read(getattr(msg, chosen))}
    out: dict[str, Any] = {}
    for fd in desc.fields:
        value = getattr(msg, fd.name)
        if fd.is_repeated:
            if fd.type == FieldDescriptor.TYPE_MESSAGE:
                out[fd.name] = [_read(v) for v in value]
            elif fd.type == FieldDescriptor.TYPE_ENUM:
                out[fd.name] = [_enum_name(fd.enum_type, v) for v in value]
            else:
                out[fd.name] = list(value)
        elif fd.has_presence and not msg.HasField(fd.name):
            continue
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            out[fd.name] = _read(value)
        elif fd.type == FieldDescriptor.TYPE_ENUM:
            out[fd.name] = _enum_name(fd.enum_type, value)
        else:
            out[fd.name] = value
    return out


def _parse(cls, data: object, what: str):
    if not isinstance(data, (bytes, bytearray)):
        raise ContractError(f"{what} is not a serialized {cls.DESCRIPTOR.full_name}")
    msg = cls()
    try:
        msg.ParseFromString(bytes(data))
    except DecodeError:
        raise ContractError(f"{what} is not a {cls.DESCRIPTOR.full_name}") from None
    return msg


def _entry(content: RecordDict, entry: str, record: str = RECORD) -> object:
    rec = content.config_records.get(record)
    if rec is None or entry not in rec:
        raise ContractError(f"message carries no {entry!r} in a {record!r} config record")
    return rec[entry]


# -- the study query ---------------------------------------------------------------------------


def query_to_proto(query: StudyQuery) -> pb.StudyQuery:
    return _fill(pb.StudyQuery(), query.model_dump(mode="python"))


def query_from_proto(msg: pb.StudyQuery) -> StudyQuery:
    """The validated query (pydantic ``ValidationError`` on anything unexpected), after the
    version check (:class:`ProtocolMismatch`: nothing else of the query is read)."""
    if msg.protocol != PROTOCOL_VERSION:
        raise ProtocolMismatch(
            f"the query speaks protocol version {msg.protocol}; this node speaks version {PROTOCOL_VERSION}",
            theirs=msg.protocol,
        )
    return StudyQuery.model_validate(_read(msg))


def query_entry(query: StudyQuery) -> bytes:
    """The serialized query (also the config entry of a SecAgg+ round's FitIns)."""
    return query_to_proto(query).SerializeToString(deterministic=True)


def query_from_entry(data: object) -> StudyQuery:
    """Inverse of :func:`query_entry` (anything but a serialized query: :class:`ContractError`)."""
    return query_from_proto(_parse(pb.StudyQuery, data, "the query"))


def encode_query(query: StudyQuery) -> RecordDict:
    return RecordDict({RECORD: ConfigRecord({QUERY_ENTRY: query_entry(query)})})


def decode_query(content: RecordDict) -> StudyQuery:
    """Parse, version-check and validate a query (:class:`ContractError`,
    :class:`ProtocolMismatch`, pydantic ``ValidationError``)."""
    return query_from_entry(_entry(content, QUERY_ENTRY))


# -- the node's reply --------------------------------------------------------------------------


def _op_reply(answers: pb.StudyAnswers, op: str) -> ProtoMessage:
    if op not in pb.StudyAnswers.DESCRIPTOR.fields_by_name:
        raise ContractError(f"operation {op!r} has no reply in the wire contract")
    return getattr(answers, op)


def _tensor_field(reply: ProtoMessage, op: str, key: str) -> pb.Tensor:
    if key not in reply.DESCRIPTOR.fields_by_name:
        raise ContractError(
            f"{op} answer array {key!r} is not in the wire contract ({reply.DESCRIPTOR.full_name})"
        )
    return getattr(reply, key)


def _answers_to_proto(
    answers: Mapping[str, Mapping[str, np.ndarray]], *, values: bool = True
) -> pb.StudyAnswers:
    out = pb.StudyAnswers()
    for op, arrays in answers.items():
        reply = _op_reply(out, op)
        reply.SetInParent()
        for key, arr in arrays.items():
            a = np.asarray(arr, dtype=np.float64)
            tensor = _tensor_field(reply, op, key)
            tensor.SetInParent()
            tensor.shape.extend(a.shape)
            if values:
                tensor.values.extend(a.ravel().tolist())
    return out


def _answers_from_proto(msg: pb.StudyAnswers, *, values: bool = True) -> dict[str, dict[str, np.ndarray]]:
    out: dict[str, dict[str, np.ndarray]] = {}
    for op_fd in msg.DESCRIPTOR.fields:
        if not msg.HasField(op_fd.name):
            continue
        reply = getattr(msg, op_fd.name)
        arrays: dict[str, np.ndarray] = {}
        for fd in reply.DESCRIPTOR.fields:
            if reply.HasField(fd.name):
                t = getattr(reply, fd.name)
                shape = tuple(int(s) for s in t.shape)
                if not values:
                    arrays[fd.name] = np.zeros(shape)
                    continue
                data = np.asarray(t.values, dtype=np.float64)
                if data.size != int(np.prod(shape, dtype=int)):
                    raise ContractError(f"{op_fd.name}.{fd.name}: {data.size} values for shape {shape}")
                arrays[fd.name] = data.reshape(shape)
        out[op_fd.name] = arrays
    return out


def reply_to_proto(
    answers: Mapping[str, Mapping[str, np.ndarray]], meta: Mapping, *, values: bool = True
) -> pb.StudyReply:
    """The node's reply; ``values=False`` keeps only the arrays' shapes (a SecAgg+ layout)."""
    return pb.StudyReply(
        protocol=PROTOCOL_VERSION,
        meta=_fill(pb.ReplyMeta(), dict(meta)),
        answers=_answers_to_proto(answers, values=values),
    )


def reply_from_proto(msg: pb.StudyReply, *, values: bool = True) -> tuple[dict, dict]:
    """``(answers, meta)`` of a reply, after the version check (:class:`ProtocolMismatch`)."""
    if msg.protocol != PROTOCOL_VERSION:
        site = msg.meta.site or "a node"
        raise ProtocolMismatch(
            f"{site} replied in protocol version {msg.protocol}; this coordinator "
            f"speaks version {PROTOCOL_VERSION}",
            theirs=msg.protocol,
        )
    return _answers_from_proto(msg.answers, values=values), _read(msg.meta)


def encode_answer(answers: Mapping[str, Mapping[str, np.ndarray]], meta: Mapping) -> RecordDict:
    data = reply_to_proto(answers, meta).SerializeToString(deterministic=True)
    return RecordDict({RECORD: ConfigRecord({REPLY_ENTRY: data})})


def decode_answer(content: RecordDict) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    """``(answers per operation {key: float64 array}, metadata)``; arrays the node withheld are
    absent."""
    return reply_from_proto(_parse(pb.StudyReply, _entry(content, REPLY_ENTRY), "the reply"))


# -- SecAgg+ rounds ----------------------------------------------------------------------------


def secure_layout(answers: Mapping[str, Mapping[str, np.ndarray]]) -> list[tuple[str, str, tuple[int, ...]]]:
    """``(op, key, shape)`` of every array of ``answers``, in the contract's field order
    (operations as in ``StudyAnswers``, arrays as in each reply): the order of the masked
    vector. An operation or array the contract lacks raises :class:`ContractError`."""
    layout = []
    for op_fd in pb.StudyAnswers.DESCRIPTOR.fields:
        if op_fd.name not in answers:
            continue
        arrays = answers[op_fd.name]
        unknown = set(arrays) - set(op_fd.message_type.fields_by_name)
        if unknown:
            raise ContractError(
                f"{op_fd.name} answer array(s) {sorted(unknown)} are not in the wire contract"
            )
        layout += [
            (op_fd.name, fd.name, tuple(np.shape(arrays[fd.name])))
            for fd in op_fd.message_type.fields
            if fd.name in arrays
        ]
    unknown_ops = set(answers) - set(pb.StudyAnswers.DESCRIPTOR.fields_by_name)
    if unknown_ops:
        raise ContractError(f"operation(s) {sorted(unknown_ops)} have no reply in the wire contract")
    return layout


def encode_secure_input(
    answers: Mapping[str, Mapping[str, np.ndarray]], meta: Mapping, *, scale: float
) -> tuple[np.ndarray, bytes]:
    """A node's masked-sum input: its arrays as one vector over ``scale`` (in
    :func:`secure_layout` order, :func:`shared.secure_sum.pack`) and its reply with the arrays'
    shapes only (public: the shapes follow from the query)."""
    from shared.secure_sum import pack

    vec, _ = pack(answers, scale=scale, layout=secure_layout(answers))
    return vec, reply_to_proto(answers, meta, values=False).SerializeToString(deterministic=True)


def decode_secure_sum(total: np.ndarray, replies: Mapping[Any, object]) -> tuple[dict, dict]:
    """The summed arrays (``total``: the unmasked sum, scale multiplied back) and each node's
    metadata, from each node's shapes-only reply (version-checked; all must agree)."""
    from shared.secure_sum import unpack

    metas, layouts = {}, set()
    for who, data in replies.items():
        msg = _parse(pb.StudyReply, data, f"node {who}'s secure-sum reply")
        shapes, metas[who] = reply_from_proto(msg, values=False)
        layouts.add(msg.answers.SerializeToString(deterministic=True))
    if len(layouts) != 1:
        raise ContractError("the nodes' secure-sum inputs have different layouts")
    return unpack(total, secure_layout(shapes)), metas


# -- risk training -----------------------------------------------------------------------------


def encode_risk(job: RiskJob, grant=None) -> ConfigRecord:
    """The config record of a risk train/evaluate message: the job and its signed grant."""
    msg = pb.RiskRequest(protocol=PROTOCOL_VERSION, job=job.model_dump_json())
    if grant is not None:
        _fill(msg.grant, grant.model_dump(mode="python"))
    return ConfigRecord({RISK_ENTRY: msg.SerializeToString(deterministic=True)})


def decode_risk(content: RecordDict, record: str = "config"):
    """``(job JSON, SignedGrant | None)`` of a risk message, version-checked. The job is left
    for the caller to validate (:class:`shared.protocol.RiskJob`) after it checked the grant.

    Raises:
        ContractError, ProtocolMismatch; pydantic ``ValidationError`` (the grant's envelope).
    """
    from shared.grant import SignedGrant

    msg = _parse(pb.RiskRequest, _entry(content, RISK_ENTRY, record), "the risk job")
    if msg.protocol != PROTOCOL_VERSION:
        raise ProtocolMismatch(
            f"the risk job speaks protocol version {msg.protocol}; this node "
            f"speaks version {PROTOCOL_VERSION}",
            theirs=msg.protocol,
        )
    grant = SignedGrant.model_validate(_read(msg.grant)) if msg.HasField("grant") else None
    return msg.job, grant
