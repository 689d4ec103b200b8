# -*- test-case-name: tests.nfs.v4.test_codec -*-
"""
The NFSv4.1/4.2 COMPOUND and CB_COMPOUND codec: every operation's arguments
and results as declarative XDR (L{claudefs_gateway.rpc.xdrtypes}), from the
XDR of RFC 8881 §16-20, RFC 7862 §15-16 and RFC 8276 §8.

Arguments decode into the attrs classes below (C{XyzArgs}); results are
L{Arm}s of (status, value) encoded by the operation's result union
(L{OPS}). The server decodes operations one at a time, in order
(L{read_op}), so an undecodable or unknown operation answers NFS4ERR_BADXDR
or NFS4ERR_OP_ILLEGAL after the operations before it have run, as RFC 8881
§15.2 and §16.2.3 ask; L{decode_compound} is the eager form tests and fuzzing
use. Every variable length is bounded (names, owners, arrays) and checked
against the bytes actually present, so garbage is an L{XDRError} and never
an allocation.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import attrs

from claudefs_gateway.nfs.v4 import const as c
from claudefs_gateway.rpc.xdr import Packer, Unpacker, XDRError
from claudefs_gateway.rpc.xdrtypes import (
    BOOL,
    I64,
    U32,
    U64,
    VOID,
    Arm,
    Array,
    Enum,
    Fixed,
    LinkedList,
    Opaque,
    Union,
    XType,
    field,
    xdr_struct,
)

# -- bounds ----------------------------------------------------------------------
#: Component names: XDR leaves them unbounded; longer than NAME_MAX answers
#: NFS4ERR_NAMETOOLONG after decoding, anything past this is BADXDR.
NAME_LIMIT = 65536
#: Bitmap words (attribute 82 needs three).
BITMAP_WORDS = 16
#: An encoded attribute list.
ATTRLIST_LIMIT = 1 << 20
#: Symbolic link targets.
LINK_LIMIT = 65536
#: Array bounds where the protocol leaves them open and real clients send few.
SMALL_ARRAY = 64
TEST_STATEIDS = 1024
OWNER_LIMIT = c.NFS4_OPAQUE_LIMIT

BITMAP = Array(U32, BITMAP_WORDS)
FH = Opaque(c.NFS4_FHSIZE)
VERIFIER = Fixed(c.NFS4_VERIFIER_SIZE)
SESSIONID = Fixed(c.NFS4_SESSIONID_SIZE)
COMPONENT = Opaque(NAME_LIMIT)
UTF8 = Opaque(NAME_LIMIT)
LINKTEXT = Opaque(LINK_LIMIT)
NFSSTAT = U32
FTYPE = Enum(range(1, 10), "nfs_ftype4")


# -- basic structures -----------------------------------------------------------------


@xdr_struct
@attrs.frozen(slots=True)
class StateId:
    """stateid4: a sequence number and 12 opaque bytes the server chose."""

    seqid: int = field(U32)
    other: bytes = field(Fixed(c.NFS4_OTHER_SIZE))


STATEID = StateId.XDR  # type: ignore[attr-defined]


@xdr_struct
@attrs.frozen(slots=True)
class NfsTime:
    seconds: int = field(I64)
    nseconds: int = field(U32)


NFSTIME = NfsTime.XDR  # type: ignore[attr-defined]


@xdr_struct
@attrs.frozen(slots=True)
class Fattr:
    """fattr4: which attributes (a bitmap) and their values, encoded in bit order."""

    mask: list[int] = field(BITMAP)
    vals: bytes = field(Opaque(ATTRLIST_LIMIT))


FATTR = Fattr.XDR  # type: ignore[attr-defined]


@xdr_struct
@attrs.frozen(slots=True)
class SpecData:
    specdata1: int = field(U32)
    specdata2: int = field(U32)


@xdr_struct
@attrs.frozen(slots=True)
class ChangeInfo:
    atomic: bool = field(BOOL)
    before: int = field(U64)
    after: int = field(U64)


CHANGE_INFO = ChangeInfo.XDR  # type: ignore[attr-defined]


@xdr_struct
@attrs.frozen(slots=True)
class StateOwner:
    """open_owner4 / lock_owner4."""

    clientid: int = field(U64)
    owner: bytes = field(Opaque(OWNER_LIMIT))


STATE_OWNER = StateOwner.XDR  # type: ignore[attr-defined]


@xdr_struct
@attrs.frozen(slots=True)
class ImplId:
    domain: bytes = field(UTF8)
    name: bytes = field(UTF8)
    date: NfsTime = field(NFSTIME)


@xdr_struct
@attrs.frozen(slots=True)
class AuthSysParms:
    stamp: int = field(U32)
    machinename: bytes = field(Opaque(255))
    uid: int = field(U32)
    gid: int = field(U32)
    gids: list[int] = field(Array(U32, 16))


@xdr_struct
@attrs.frozen(slots=True)
class GssCbHandles:
    service: int = field(Enum((1, 2, 3), "rpc_gss_svc_t"))
    handle_from_server: bytes = field(Opaque(OWNER_LIMIT))
    handle_from_client: bytes = field(Opaque(OWNER_LIMIT))


#: callback_sec_parms4: Arm(flavor, None | AuthSysParms | GssCbHandles)
CB_SEC_PARMS = Union(
    U32,
    {
        c.AUTH_NONE: VOID,
        c.AUTH_SYS: AuthSysParms.XDR,  # type: ignore[attr-defined]
        c.RPCSEC_GSS: GssCbHandles.XDR,  # type: ignore[attr-defined]
    },
    name="callback_sec_parms4",
)


@xdr_struct
@attrs.frozen(slots=True)
class ChannelAttrs:
    headerpadsize: int = field(U32)
    maxrequestsize: int = field(U32)
    maxresponsesize: int = field(U32)
    maxresponsesize_cached: int = field(U32)
    maxoperations: int = field(U32)
    maxrequests: int = field(U32)
    rdma_ird: list[int] = field(Array(U32, 1))


CHANNEL_ATTRS = ChannelAttrs.XDR  # type: ignore[attr-defined]


@xdr_struct
@attrs.frozen(slots=True)
class StateProtectOps:
    must_enforce: list[int] = field(BITMAP)
    must_allow: list[int] = field(BITMAP)


@xdr_struct
@attrs.frozen(slots=True)
class SsvSpParms:
    ops: StateProtectOps = field(StateProtectOps.XDR)  # type: ignore[attr-defined]
    hash_algs: list[bytes] = field(Array(Opaque(OWNER_LIMIT), SMALL_ARRAY))
    encr_algs: list[bytes] = field(Array(Opaque(OWNER_LIMIT), SMALL_ARRAY))
    window: int = field(U32)
    num_gss_handles: int = field(U32)


STATE_PROTECT_A = Union(
    Enum((0, 1, 2), "state_protect_how4"),
    {
        c.SP4_NONE: VOID,
        c.SP4_MACH_CRED: StateProtectOps.XDR,  # type: ignore[attr-defined]
        c.SP4_SSV: SsvSpParms.XDR,  # type: ignore[attr-defined]
    },
    name="state_protect4_a",
)


@xdr_struct
@attrs.frozen(slots=True)
class SsvProtInfo:
    ops: StateProtectOps = field(StateProtectOps.XDR)  # type: ignore[attr-defined]
    hash_alg: int = field(U32)
    encr_alg: int = field(U32)
    ssv_len: int = field(U32)
    window: int = field(U32)
    handles: list[bytes] = field(Array(Opaque(OWNER_LIMIT), SMALL_ARRAY))


STATE_PROTECT_R = Union(
    Enum((0, 1, 2), "state_protect_how4"),
    {
        c.SP4_NONE: VOID,
        c.SP4_MACH_CRED: StateProtectOps.XDR,  # type: ignore[attr-defined]
        c.SP4_SSV: SsvProtInfo.XDR,  # type: ignore[attr-defined]
    },
    name="state_protect4_r",
)


@xdr_struct
@attrs.frozen(slots=True)
class ServerOwner:
    minor_id: int = field(U64)
    major_id: bytes = field(Opaque(c.NFS4_OPAQUE_LIMIT))


@xdr_struct
@attrs.frozen(slots=True)
class NetAddr:
    netid: bytes = field(Opaque(OWNER_LIMIT))
    addr: bytes = field(Opaque(OWNER_LIMIT))


NETLOC = Union(
    Enum((1, 2, 3), "netloc_type4"),
    {
        c.NL4_NAME: UTF8,
        c.NL4_URL: UTF8,
        c.NL4_NETADDR: NetAddr.XDR,  # type: ignore[attr-defined]
    },
    name="netloc4",
)


@xdr_struct
@attrs.frozen(slots=True)
class WriteResponse:
    callback_id: list[StateId] = field(Array(STATEID, 1))
    count: int = field(U64)
    committed: int = field(Enum((0, 1, 2), "stable_how4"))
    writeverf: bytes = field(VERIFIER)


WRITE_RESPONSE = WriteResponse.XDR  # type: ignore[attr-defined]


# -- operation arguments (RFC 8881 §18, RFC 7862 §15, RFC 8276 §8.4) --------------------


@xdr_struct
@attrs.frozen(slots=True)
class AccessArgs:
    access: int = field(U32)


@xdr_struct
@attrs.frozen(slots=True)
class CloseArgs:
    seqid: int = field(U32)
    open_stateid: StateId = field(STATEID)


@xdr_struct
@attrs.frozen(slots=True)
class CommitArgs:
    offset: int = field(U64)
    count: int = field(U32)


#: createtype4: Arm(type, linkdata bytes | SpecData | None)
CREATETYPE = Union(
    FTYPE,
    {c.NF4LNK: LINKTEXT, c.NF4BLK: SpecData.XDR, c.NF4CHR: SpecData.XDR},  # type: ignore[attr-defined]
    default=VOID,
    name="createtype4",
)


@xdr_struct
@attrs.frozen(slots=True)
class CreateArgs:
    objtype: Arm = field(CREATETYPE)
    objname: bytes = field(COMPONENT)
    createattrs: Fattr = field(FATTR)


@xdr_struct
@attrs.frozen(slots=True)
class ClientidArgs:
    """DELEGPURGE4args, RENEW4args, DESTROY_CLIENTID4args."""

    clientid: int = field(U64)


@xdr_struct
@attrs.frozen(slots=True)
class StateidArgs:
    """DELEGRETURN, FREE_STATEID, OFFLOAD_CANCEL, OFFLOAD_STATUS: one stateid."""

    stateid: StateId = field(STATEID)


@xdr_struct
@attrs.frozen(slots=True)
class GetattrArgs:
    attr_request: list[int] = field(BITMAP)


@xdr_struct
@attrs.frozen(slots=True)
class NameArgs:
    """LINK, LOOKUP, REMOVE, SECINFO: one component."""

    name: bytes = field(COMPONENT)


@xdr_struct
@attrs.frozen(slots=True)
class OpenToLockOwner:
    open_seqid: int = field(U32)
    open_stateid: StateId = field(STATEID)
    lock_seqid: int = field(U32)
    lock_owner: StateOwner = field(STATE_OWNER)


@xdr_struct
@attrs.frozen(slots=True)
class ExistLockOwner:
    lock_stateid: StateId = field(STATEID)
    lock_seqid: int = field(U32)


LOCKER = Union(
    BOOL,
    {True: OpenToLockOwner.XDR, False: ExistLockOwner.XDR},  # type: ignore[attr-defined]
    name="locker4",
)
LOCK_TYPE = Enum((1, 2, 3, 4), "nfs_lock_type4")


@xdr_struct
@attrs.frozen(slots=True)
class LockArgs:
    locktype: int = field(LOCK_TYPE)
    reclaim: bool = field(BOOL)
    offset: int = field(U64)
    length: int = field(U64)
    locker: Arm = field(LOCKER)


@xdr_struct
@attrs.frozen(slots=True)
class LocktArgs:
    locktype: int = field(LOCK_TYPE)
    offset: int = field(U64)
    length: int = field(U64)
    owner: StateOwner = field(STATE_OWNER)


@xdr_struct
@attrs.frozen(slots=True)
class LockuArgs:
    locktype: int = field(LOCK_TYPE)
    seqid: int = field(U32)
    lock_stateid: StateId = field(STATEID)
    offset: int = field(U64)
    length: int = field(U64)


@xdr_struct
@attrs.frozen(slots=True)
class FattrArgs:
    """NVERIFY, VERIFY: attributes to compare."""

    obj_attributes: Fattr = field(FATTR)


@xdr_struct
@attrs.frozen(slots=True)
class CreatVerfAttr:
    verf: bytes = field(VERIFIER)
    attrs: Fattr = field(FATTR)


CREATEHOW = Union(
    Enum((0, 1, 2, 3), "createmode4"),
    {
        c.UNCHECKED4: FATTR,
        c.GUARDED4: FATTR,
        c.EXCLUSIVE4: VERIFIER,
        c.EXCLUSIVE4_1: CreatVerfAttr.XDR,  # type: ignore[attr-defined]
    },
    name="createhow4",
)
OPENFLAG = Union(
    Enum((0, 1), "opentype4"), {c.OPEN4_CREATE: CREATEHOW}, default=VOID, name="openflag4"
)
DELEG_TYPE = Enum((0, 1, 2, 3, 4, 5), "open_delegation_type4")


@xdr_struct
@attrs.frozen(slots=True)
class ClaimDelegateCur:
    delegate_stateid: StateId = field(STATEID)
    file: bytes = field(COMPONENT)


OPEN_CLAIM = Union(
    Enum(range(7), "open_claim_type4"),
    {
        c.CLAIM_NULL: COMPONENT,
        c.CLAIM_PREVIOUS: DELEG_TYPE,
        c.CLAIM_DELEGATE_CUR: ClaimDelegateCur.XDR,  # type: ignore[attr-defined]
        c.CLAIM_DELEGATE_PREV: COMPONENT,
        c.CLAIM_FH: VOID,
        c.CLAIM_DELEG_PREV_FH: VOID,
        c.CLAIM_DELEG_CUR_FH: STATEID,
    },
    name="open_claim4",
)


@xdr_struct
@attrs.frozen(slots=True)
class OpenArgs:
    seqid: int = field(U32)
    share_access: int = field(U32)
    share_deny: int = field(U32)
    owner: StateOwner = field(STATE_OWNER)
    openhow: Arm = field(OPENFLAG)
    claim: Arm = field(OPEN_CLAIM)


@xdr_struct
@attrs.frozen(slots=True)
class OpenattrArgs:
    createdir: bool = field(BOOL)


@xdr_struct
@attrs.frozen(slots=True)
class OpenConfirmArgs:
    open_stateid: StateId = field(STATEID)
    seqid: int = field(U32)


@xdr_struct
@attrs.frozen(slots=True)
class OpenDowngradeArgs:
    open_stateid: StateId = field(STATEID)
    seqid: int = field(U32)
    share_access: int = field(U32)
    share_deny: int = field(U32)


@xdr_struct
@attrs.frozen(slots=True)
class PutfhArgs:
    object: bytes = field(FH)


@xdr_struct
@attrs.frozen(slots=True)
class ReadArgs:
    stateid: StateId = field(STATEID)
    offset: int = field(U64)
    count: int = field(U32)


@xdr_struct
@attrs.frozen(slots=True)
class ReaddirArgs:
    cookie: int = field(U64)
    cookieverf: bytes = field(VERIFIER)
    dircount: int = field(U32)
    maxcount: int = field(U32)
    attr_request: list[int] = field(BITMAP)


@xdr_struct
@attrs.frozen(slots=True)
class RenameArgs:
    oldname: bytes = field(COMPONENT)
    newname: bytes = field(COMPONENT)


@xdr_struct
@attrs.frozen(slots=True)
class SetattrArgs:
    stateid: StateId = field(STATEID)
    obj_attributes: Fattr = field(FATTR)


@xdr_struct
@attrs.frozen(slots=True)
class CbClient:
    cb_program: int = field(U32)
    cb_location: NetAddr = field(NetAddr.XDR)  # type: ignore[attr-defined]


@xdr_struct
@attrs.frozen(slots=True)
class SetclientidArgs:
    verifier: bytes = field(VERIFIER)
    id: bytes = field(Opaque(c.NFS4_OPAQUE_LIMIT))
    callback: CbClient = field(CbClient.XDR)  # type: ignore[attr-defined]
    callback_ident: int = field(U32)


@xdr_struct
@attrs.frozen(slots=True)
class SetclientidConfirmArgs:
    clientid: int = field(U64)
    setclientid_confirm: bytes = field(VERIFIER)


@xdr_struct
@attrs.frozen(slots=True)
class WriteArgs:
    stateid: StateId = field(STATEID)
    offset: int = field(U64)
    stable: int = field(Enum((0, 1, 2), "stable_how4"))
    # A view into the record: WRITE data is passed to the store without a copy.
    data: bytes = field(Opaque(view=True))


@xdr_struct
@attrs.frozen(slots=True)
class LockOwnerArgs:
    """RELEASE_LOCKOWNER4args."""

    lock_owner: StateOwner = field(STATE_OWNER)


@xdr_struct
@attrs.frozen(slots=True)
class BackchannelCtlArgs:
    cb_program: int = field(U32)
    sec_parms: list[Arm] = field(Array(CB_SEC_PARMS, SMALL_ARRAY))


@xdr_struct
@attrs.frozen(slots=True)
class BindConnArgs:
    sessid: bytes = field(SESSIONID)
    dir: int = field(Enum((1, 2, 3, 7), "channel_dir_from_client4"))
    use_conn_in_rdma_mode: bool = field(BOOL)


@xdr_struct
@attrs.frozen(slots=True)
class ExchangeIdArgs:
    verifier: bytes = field(VERIFIER)
    ownerid: bytes = field(Opaque(c.NFS4_OPAQUE_LIMIT))
    flags: int = field(U32)
    state_protect: Arm = field(STATE_PROTECT_A)
    client_impl_id: list[ImplId] = field(Array(ImplId.XDR, 1))  # type: ignore[attr-defined]


@xdr_struct
@attrs.frozen(slots=True)
class CreateSessionArgs:
    clientid: int = field(U64)
    sequence: int = field(U32)
    flags: int = field(U32)
    fore_chan_attrs: ChannelAttrs = field(CHANNEL_ATTRS)
    back_chan_attrs: ChannelAttrs = field(CHANNEL_ATTRS)
    cb_program: int = field(U32)
    sec_parms: list[Arm] = field(Array(CB_SEC_PARMS, SMALL_ARRAY))


@xdr_struct
@attrs.frozen(slots=True)
class SessionArgs:
    """DESTROY_SESSION4args."""

    sessionid: bytes = field(SESSIONID)


@xdr_struct
@attrs.frozen(slots=True)
class GetDirDelegationArgs:
    signal_deleg_avail: bool = field(BOOL)
    notification_types: list[int] = field(BITMAP)
    child_attr_delay: NfsTime = field(NFSTIME)
    dir_attr_delay: NfsTime = field(NFSTIME)
    child_attributes: list[int] = field(BITMAP)
    dir_attributes: list[int] = field(BITMAP)


@xdr_struct
@attrs.frozen(slots=True)
class GetDeviceInfoArgs:
    device_id: bytes = field(Fixed(16))
    layout_type: int = field(U32)
    maxcount: int = field(U32)
    notify_types: list[int] = field(BITMAP)


@xdr_struct
@attrs.frozen(slots=True)
class GetDeviceListArgs:
    layout_type: int = field(U32)
    maxdevices: int = field(U32)
    cookie: int = field(U64)
    cookieverf: bytes = field(VERIFIER)


@xdr_struct
@attrs.frozen(slots=True)
class LayoutUpdate:
    type: int = field(U32)
    body: bytes = field(Opaque(ATTRLIST_LIMIT))


@xdr_struct
@attrs.frozen(slots=True)
class LayoutCommitArgs:
    offset: int = field(U64)
    length: int = field(U64)
    reclaim: bool = field(BOOL)
    stateid: StateId = field(STATEID)
    last_write_offset: Arm = field(Union(BOOL, {True: U64, False: VOID}))
    time_modify: Arm = field(Union(BOOL, {True: NFSTIME, False: VOID}))
    layoutupdate: LayoutUpdate = field(LayoutUpdate.XDR)  # type: ignore[attr-defined]


@xdr_struct
@attrs.frozen(slots=True)
class LayoutGetArgs:
    signal_layout_avail: bool = field(BOOL)
    layout_type: int = field(U32)
    iomode: int = field(U32)
    offset: int = field(U64)
    length: int = field(U64)
    minlength: int = field(U64)
    stateid: StateId = field(STATEID)
    maxcount: int = field(U32)


@xdr_struct
@attrs.frozen(slots=True)
class LayoutReturnFile:
    offset: int = field(U64)
    length: int = field(U64)
    stateid: StateId = field(STATEID)
    body: bytes = field(Opaque(ATTRLIST_LIMIT))


@xdr_struct
@attrs.frozen(slots=True)
class LayoutReturnArgs:
    reclaim: bool = field(BOOL)
    layout_type: int = field(U32)
    iomode: int = field(U32)
    layoutreturn: Arm = field(
        Union(U32, {1: LayoutReturnFile.XDR}, default=VOID)  # type: ignore[attr-defined]
    )


@xdr_struct
@attrs.frozen(slots=True)
class SecinfoNoNameArgs:
    style: int = field(Enum((0, 1), "secinfo_style4"))


@xdr_struct
@attrs.frozen(slots=True)
class SequenceArgs:
    sessionid: bytes = field(SESSIONID)
    sequenceid: int = field(U32)
    slotid: int = field(U32)
    highest_slotid: int = field(U32)
    cachethis: bool = field(BOOL)


@xdr_struct
@attrs.frozen(slots=True)
class SetSsvArgs:
    ssv: bytes = field(Opaque(OWNER_LIMIT))
    digest: bytes = field(Opaque(OWNER_LIMIT))


@xdr_struct
@attrs.frozen(slots=True)
class TestStateidArgs:
    stateids: list[StateId] = field(Array(STATEID, TEST_STATEIDS))


DELEG_CLAIM = Union(
    Enum(range(7), "open_claim_type4"),
    {c.CLAIM_FH: VOID, c.CLAIM_DELEG_PREV_FH: VOID, c.CLAIM_PREVIOUS: DELEG_TYPE},
    name="deleg_claim4",
)


@xdr_struct
@attrs.frozen(slots=True)
class WantDelegationArgs:
    want: int = field(U32)
    claim: Arm = field(DELEG_CLAIM)


@xdr_struct
@attrs.frozen(slots=True)
class ReclaimCompleteArgs:
    one_fs: bool = field(BOOL)


@xdr_struct
@attrs.frozen(slots=True)
class RangeArgs:
    """ALLOCATE4args, DEALLOCATE4args."""

    stateid: StateId = field(STATEID)
    offset: int = field(U64)
    length: int = field(U64)


@xdr_struct
@attrs.frozen(slots=True)
class CopyArgs:
    src_stateid: StateId = field(STATEID)
    dst_stateid: StateId = field(STATEID)
    src_offset: int = field(U64)
    dst_offset: int = field(U64)
    count: int = field(U64)
    consecutive: bool = field(BOOL)
    synchronous: bool = field(BOOL)
    source_server: list[Arm] = field(Array(NETLOC, SMALL_ARRAY))


@xdr_struct
@attrs.frozen(slots=True)
class CopyNotifyArgs:
    src_stateid: StateId = field(STATEID)
    destination_server: Arm = field(NETLOC)


@xdr_struct
@attrs.frozen(slots=True)
class IoAdviseArgs:
    stateid: StateId = field(STATEID)
    offset: int = field(U64)
    count: int = field(U64)
    hints: list[int] = field(BITMAP)


@xdr_struct
@attrs.frozen(slots=True)
class DeviceError:
    deviceid: bytes = field(Fixed(16))
    status: int = field(U32)
    opnum: int = field(U32)


@xdr_struct
@attrs.frozen(slots=True)
class LayoutErrorArgs:
    offset: int = field(U64)
    length: int = field(U64)
    stateid: StateId = field(STATEID)
    errors: list[DeviceError] = field(Array(DeviceError.XDR, SMALL_ARRAY))  # type: ignore[attr-defined]


@xdr_struct
@attrs.frozen(slots=True)
class IoInfo:
    count: int = field(U64)
    bytes: int = field(U64)


@xdr_struct
@attrs.frozen(slots=True)
class LayoutStatsArgs:
    offset: int = field(U64)
    length: int = field(U64)
    stateid: StateId = field(STATEID)
    read: IoInfo = field(IoInfo.XDR)  # type: ignore[attr-defined]
    write: IoInfo = field(IoInfo.XDR)  # type: ignore[attr-defined]
    deviceid: bytes = field(Fixed(16))
    layoutupdate: LayoutUpdate = field(LayoutUpdate.XDR)  # type: ignore[attr-defined]


@xdr_struct
@attrs.frozen(slots=True)
class ReadPlusArgs:
    stateid: StateId = field(STATEID)
    offset: int = field(U64)
    count: int = field(U32)


@xdr_struct
@attrs.frozen(slots=True)
class SeekArgs:
    stateid: StateId = field(STATEID)
    offset: int = field(U64)
    what: int = field(Enum((0, 1), "data_content4"))


@xdr_struct
@attrs.frozen(slots=True)
class AppDataBlock:
    offset: int = field(U64)
    block_size: int = field(U64)
    block_count: int = field(U64)
    reloff_blocknum: int = field(U64)
    block_num: int = field(U32)
    reloff_pattern: int = field(U64)
    pattern: bytes = field(Opaque(ATTRLIST_LIMIT))


@xdr_struct
@attrs.frozen(slots=True)
class WriteSameArgs:
    stateid: StateId = field(STATEID)
    stable: int = field(Enum((0, 1, 2), "stable_how4"))
    adb: AppDataBlock = field(AppDataBlock.XDR)  # type: ignore[attr-defined]


@xdr_struct
@attrs.frozen(slots=True)
class CloneArgs:
    src_stateid: StateId = field(STATEID)
    dst_stateid: StateId = field(STATEID)
    src_offset: int = field(U64)
    dst_offset: int = field(U64)
    count: int = field(U64)


@xdr_struct
@attrs.frozen(slots=True)
class GetxattrArgs:
    name: bytes = field(COMPONENT)


@xdr_struct
@attrs.frozen(slots=True)
class SetxattrArgs:
    option: int = field(Enum((0, 1, 2), "setxattr_option4"))
    key: bytes = field(COMPONENT)
    value: bytes = field(Opaque(ATTRLIST_LIMIT))


@xdr_struct
@attrs.frozen(slots=True)
class ListxattrsArgs:
    cookie: int = field(U64)
    maxcount: int = field(U32)


# -- results ---------------------------------------------------------------------


class Always(XType):
    """
    A result that is a status followed by the same body whatever the status
    (SETATTR4res: status and attrsset). Values are L{Arm}s like the unions'.
    """

    __slots__ = ("body",)

    def __init__(self, body: XType) -> None:
        self.body = body

    def dec(self, u: Unpacker) -> Arm:
        status = u.u32()
        return Arm(status, self.body.dec(u))

    def enc(self, p: Packer, v: Arm) -> None:
        p.u32(v.tag)
        self.body.enc(p, v.value)


def ok(resok: XType, **errors: XType) -> Union:
    """A result union: C{resok} for NFS4_OK, other arms by status, else void."""
    arms: dict[int, XType] = {c.NFS4_OK: resok}
    for name, t in errors.items():
        arms[getattr(c, name)] = t
    return Union(NFSSTAT, arms, default=VOID)


#: A result that is only a status.
STATUS = Union(NFSSTAT, {}, default=VOID, name="status")


@xdr_struct
@attrs.frozen(slots=True)
class AccessResok:
    supported: int = field(U32)
    access: int = field(U32)


@xdr_struct
@attrs.frozen(slots=True)
class CreateResok:
    cinfo: ChangeInfo = field(CHANGE_INFO)
    attrset: list[int] = field(BITMAP)


@xdr_struct
@attrs.frozen(slots=True)
class LockDenied:
    offset: int = field(U64)
    length: int = field(U64)
    locktype: int = field(U32)
    owner: StateOwner = field(STATE_OWNER)


LOCK_DENIED = LockDenied.XDR  # type: ignore[attr-defined]


@xdr_struct
@attrs.frozen(slots=True)
class Nfsace:
    type: int = field(U32)
    flag: int = field(U32)
    access_mask: int = field(U32)
    who: bytes = field(UTF8)


NFSACE = Nfsace.XDR  # type: ignore[attr-defined]


@xdr_struct
@attrs.frozen(slots=True)
class ReadDelegation:
    stateid: StateId = field(STATEID)
    recall: bool = field(BOOL)
    permissions: Nfsace = field(NFSACE)


@xdr_struct
@attrs.frozen(slots=True)
class ModifiedLimit:
    num_blocks: int = field(U32)
    bytes_per_block: int = field(U32)


SPACE_LIMIT = Union(
    Enum((1, 2), "limit_by4"),
    {1: U64, 2: ModifiedLimit.XDR},  # type: ignore[attr-defined]
    name="nfs_space_limit4",
)


@xdr_struct
@attrs.frozen(slots=True)
class WriteDelegation:
    stateid: StateId = field(STATEID)
    recall: bool = field(BOOL)
    space_limit: Arm = field(SPACE_LIMIT)
    permissions: Nfsace = field(NFSACE)


NONE_DELEGATION = Union(
    Enum(range(9), "why_no_delegation4"),
    {c.WND4_CONTENTION: BOOL, c.WND4_RESOURCE: BOOL},
    default=VOID,
    name="open_none_delegation4",
)
OPEN_DELEGATION = Union(
    DELEG_TYPE,
    {
        c.OPEN_DELEGATE_NONE: VOID,
        c.OPEN_DELEGATE_READ: ReadDelegation.XDR,  # type: ignore[attr-defined]
        4: ReadDelegation.XDR,  # type: ignore[attr-defined]
        c.OPEN_DELEGATE_WRITE: WriteDelegation.XDR,  # type: ignore[attr-defined]
        5: WriteDelegation.XDR,  # type: ignore[attr-defined]
        c.OPEN_DELEGATE_NONE_EXT: NONE_DELEGATION,
    },
    name="open_delegation4",
)


@xdr_struct
@attrs.frozen(slots=True)
class OpenResok:
    stateid: StateId = field(STATEID)
    cinfo: ChangeInfo = field(CHANGE_INFO)
    rflags: int = field(U32)
    attrset: list[int] = field(BITMAP)
    delegation: Arm = field(OPEN_DELEGATION)


@xdr_struct
@attrs.frozen(slots=True)
class ReadResok:
    eof: bool = field(BOOL)
    data: bytes = field(Opaque())


@xdr_struct
@attrs.frozen(slots=True)
class Entry:
    cookie: int = field(U64)
    name: bytes = field(COMPONENT)
    attrs: Fattr = field(FATTR)


@xdr_struct
@attrs.frozen(slots=True)
class ReaddirResok:
    cookieverf: bytes = field(VERIFIER)
    entries: list[Entry] = field(LinkedList(Entry.XDR))  # type: ignore[attr-defined]
    eof: bool = field(BOOL)


@xdr_struct
@attrs.frozen(slots=True)
class RenameResok:
    source_cinfo: ChangeInfo = field(CHANGE_INFO)
    target_cinfo: ChangeInfo = field(CHANGE_INFO)


@xdr_struct
@attrs.frozen(slots=True)
class RpcsecGssInfo:
    oid: bytes = field(Opaque(OWNER_LIMIT))
    qop: int = field(U32)
    service: int = field(U32)


SECINFO4 = Union(
    U32,
    {c.RPCSEC_GSS: RpcsecGssInfo.XDR},  # type: ignore[attr-defined]
    default=VOID,
    name="secinfo4",
)
SECINFO_RES = ok(Array(SECINFO4, SMALL_ARRAY))


@xdr_struct
@attrs.frozen(slots=True)
class SetclientidResok:
    clientid: int = field(U64)
    setclientid_confirm: bytes = field(VERIFIER)


@xdr_struct
@attrs.frozen(slots=True)
class WriteResok:
    count: int = field(U32)
    committed: int = field(U32)
    writeverf: bytes = field(VERIFIER)


@xdr_struct
@attrs.frozen(slots=True)
class BindConnResok:
    sessid: bytes = field(SESSIONID)
    dir: int = field(U32)
    use_conn_in_rdma_mode: bool = field(BOOL)


@xdr_struct
@attrs.frozen(slots=True)
class ExchangeIdResok:
    clientid: int = field(U64)
    sequenceid: int = field(U32)
    flags: int = field(U32)
    state_protect: Arm = field(STATE_PROTECT_R)
    server_owner: ServerOwner = field(ServerOwner.XDR)  # type: ignore[attr-defined]
    server_scope: bytes = field(Opaque(c.NFS4_OPAQUE_LIMIT))
    server_impl_id: list[ImplId] = field(Array(ImplId.XDR, 1))  # type: ignore[attr-defined]


@xdr_struct
@attrs.frozen(slots=True)
class CreateSessionResok:
    sessionid: bytes = field(SESSIONID)
    sequence: int = field(U32)
    flags: int = field(U32)
    fore_chan_attrs: ChannelAttrs = field(CHANNEL_ATTRS)
    back_chan_attrs: ChannelAttrs = field(CHANNEL_ATTRS)


@xdr_struct
@attrs.frozen(slots=True)
class SequenceResok:
    sessionid: bytes = field(SESSIONID)
    sequenceid: int = field(U32)
    slotid: int = field(U32)
    highest_slotid: int = field(U32)
    target_highest_slotid: int = field(U32)
    status_flags: int = field(U32)


@xdr_struct
@attrs.frozen(slots=True)
class GetDirDelegationResok:
    cookieverf: bytes = field(VERIFIER)
    stateid: StateId = field(STATEID)
    notification: list[int] = field(BITMAP)
    child_attributes: list[int] = field(BITMAP)
    dir_attributes: list[int] = field(BITMAP)


GDD_NON_FATAL = Union(
    Enum((0, 1), "gddrnf4_status"),
    {0: GetDirDelegationResok.XDR, 1: BOOL},  # type: ignore[attr-defined]
    name="GET_DIR_DELEGATION4res_non_fatal",
)


@xdr_struct
@attrs.frozen(slots=True)
class CopyRequirements:
    consecutive: bool = field(BOOL)
    synchronous: bool = field(BOOL)


COPY_REQUIREMENTS = CopyRequirements.XDR  # type: ignore[attr-defined]


@xdr_struct
@attrs.frozen(slots=True)
class CopyResok:
    response: WriteResponse = field(WRITE_RESPONSE)
    requirements: CopyRequirements = field(COPY_REQUIREMENTS)


@xdr_struct
@attrs.frozen(slots=True)
class CopyNotifyResok:
    lease_time: NfsTime = field(NFSTIME)
    stateid: StateId = field(STATEID)
    source_server: list[Arm] = field(Array(NETLOC, SMALL_ARRAY))


@xdr_struct
@attrs.frozen(slots=True)
class OffloadStatusResok:
    count: int = field(U64)
    complete: list[int] = field(Array(U32, 1))


@xdr_struct
@attrs.frozen(slots=True)
class Data:
    offset: int = field(U64)
    data: bytes = field(Opaque())


@xdr_struct
@attrs.frozen(slots=True)
class DataInfo:
    offset: int = field(U64)
    length: int = field(U64)


READ_PLUS_CONTENT = Union(
    U32,
    {c.NFS4_CONTENT_DATA: Data.XDR, c.NFS4_CONTENT_HOLE: DataInfo.XDR},  # type: ignore[attr-defined]
    default=VOID,
    name="read_plus_content",
)


@xdr_struct
@attrs.frozen(slots=True)
class ReadPlusResok:
    eof: bool = field(BOOL)
    contents: list[Arm] = field(Array(READ_PLUS_CONTENT, SMALL_ARRAY))


@xdr_struct
@attrs.frozen(slots=True)
class SeekResok:
    eof: bool = field(BOOL)
    offset: int = field(U64)


@xdr_struct
@attrs.frozen(slots=True)
class ListxattrsResok:
    cookie: int = field(U64)
    names: list[bytes] = field(Array(COMPONENT, 1 << 16))
    eof: bool = field(BOOL)


@xdr_struct
@attrs.frozen(slots=True)
class GetDeviceListResok:
    cookie: int = field(U64)
    cookieverf: bytes = field(VERIFIER)
    deviceid_list: list[bytes] = field(Array(Fixed(16), SMALL_ARRAY))
    eof: bool = field(BOOL)


@xdr_struct
@attrs.frozen(slots=True)
class Layout4:
    """layout4 (RFC 8881 §3.3.15): one segment and its type-specific body."""

    offset: int = field(U64)
    length: int = field(U64)
    iomode: int = field(U32)
    type: int = field(U32)
    body: bytes = field(Opaque(ATTRLIST_LIMIT))


@xdr_struct
@attrs.frozen(slots=True)
class LayoutGetResok:
    return_on_close: bool = field(BOOL)
    stateid: StateId = field(STATEID)
    layouts: list[Layout4] = field(Array(Layout4.XDR, SMALL_ARRAY))  # type: ignore[attr-defined]


@xdr_struct
@attrs.frozen(slots=True)
class DeviceAddr4:
    """device_addr4 (RFC 8881 §3.3.14)."""

    type: int = field(U32)
    body: bytes = field(Opaque(ATTRLIST_LIMIT))


@xdr_struct
@attrs.frozen(slots=True)
class GetDeviceInfoResok:
    device: DeviceAddr4 = field(DeviceAddr4.XDR)  # type: ignore[attr-defined]
    notification: list[int] = field(BITMAP)


#: newsize4 and layoutreturn_stateid: a bool, then the value when true.
NEWSIZE = Union(BOOL, {True: U64, False: VOID}, name="newsize4")
LAYOUTRETURN_STATEID = Union(BOOL, {True: STATEID, False: VOID}, name="layoutreturn_stateid")


# -- the operation table ----------------------------------------------------------------


@attrs.frozen(slots=True)
class OpSpec:
    """One operation: its RFC name, argument type and result type."""

    name: str
    args: XType
    res: XType


def _x(cls: type) -> XType:
    t: XType = cls.XDR  # type: ignore[attr-defined]
    return t


OPS: dict[int, OpSpec] = {
    c.OP_ACCESS: OpSpec("ACCESS", _x(AccessArgs), ok(_x(AccessResok))),
    c.OP_CLOSE: OpSpec("CLOSE", _x(CloseArgs), ok(STATEID)),
    c.OP_COMMIT: OpSpec("COMMIT", _x(CommitArgs), ok(VERIFIER)),
    c.OP_CREATE: OpSpec("CREATE", _x(CreateArgs), ok(_x(CreateResok))),
    c.OP_DELEGPURGE: OpSpec("DELEGPURGE", _x(ClientidArgs), STATUS),
    c.OP_DELEGRETURN: OpSpec("DELEGRETURN", _x(StateidArgs), STATUS),
    c.OP_GETATTR: OpSpec("GETATTR", _x(GetattrArgs), ok(FATTR)),
    c.OP_GETFH: OpSpec("GETFH", VOID, ok(FH)),
    c.OP_LINK: OpSpec("LINK", _x(NameArgs), ok(CHANGE_INFO)),
    c.OP_LOCK: OpSpec("LOCK", _x(LockArgs), ok(STATEID, NFS4ERR_DENIED=LOCK_DENIED)),
    c.OP_LOCKT: OpSpec("LOCKT", _x(LocktArgs), ok(VOID, NFS4ERR_DENIED=LOCK_DENIED)),
    c.OP_LOCKU: OpSpec("LOCKU", _x(LockuArgs), ok(STATEID)),
    c.OP_LOOKUP: OpSpec("LOOKUP", _x(NameArgs), STATUS),
    c.OP_LOOKUPP: OpSpec("LOOKUPP", VOID, STATUS),
    c.OP_NVERIFY: OpSpec("NVERIFY", _x(FattrArgs), STATUS),
    c.OP_OPEN: OpSpec("OPEN", _x(OpenArgs), ok(_x(OpenResok))),
    c.OP_OPENATTR: OpSpec("OPENATTR", _x(OpenattrArgs), STATUS),
    c.OP_OPEN_CONFIRM: OpSpec("OPEN_CONFIRM", _x(OpenConfirmArgs), ok(STATEID)),
    c.OP_OPEN_DOWNGRADE: OpSpec("OPEN_DOWNGRADE", _x(OpenDowngradeArgs), ok(STATEID)),
    c.OP_PUTFH: OpSpec("PUTFH", _x(PutfhArgs), STATUS),
    c.OP_PUTPUBFH: OpSpec("PUTPUBFH", VOID, STATUS),
    c.OP_PUTROOTFH: OpSpec("PUTROOTFH", VOID, STATUS),
    c.OP_READ: OpSpec("READ", _x(ReadArgs), ok(_x(ReadResok))),
    c.OP_READDIR: OpSpec("READDIR", _x(ReaddirArgs), ok(_x(ReaddirResok))),
    c.OP_READLINK: OpSpec("READLINK", VOID, ok(LINKTEXT)),
    c.OP_REMOVE: OpSpec("REMOVE", _x(NameArgs), ok(CHANGE_INFO)),
    c.OP_RENAME: OpSpec("RENAME", _x(RenameArgs), ok(_x(RenameResok))),
    c.OP_RENEW: OpSpec("RENEW", _x(ClientidArgs), STATUS),
    c.OP_RESTOREFH: OpSpec("RESTOREFH", VOID, STATUS),
    c.OP_SAVEFH: OpSpec("SAVEFH", VOID, STATUS),
    c.OP_SECINFO: OpSpec("SECINFO", _x(NameArgs), SECINFO_RES),
    c.OP_SETATTR: OpSpec("SETATTR", _x(SetattrArgs), Always(BITMAP)),
    c.OP_SETCLIENTID: OpSpec(
        "SETCLIENTID",
        _x(SetclientidArgs),
        ok(_x(SetclientidResok), NFS4ERR_CLID_INUSE=_x(NetAddr)),
    ),
    c.OP_SETCLIENTID_CONFIRM: OpSpec("SETCLIENTID_CONFIRM", _x(SetclientidConfirmArgs), STATUS),
    c.OP_VERIFY: OpSpec("VERIFY", _x(FattrArgs), STATUS),
    c.OP_WRITE: OpSpec("WRITE", _x(WriteArgs), ok(_x(WriteResok))),
    c.OP_RELEASE_LOCKOWNER: OpSpec("RELEASE_LOCKOWNER", _x(LockOwnerArgs), STATUS),
    c.OP_BACKCHANNEL_CTL: OpSpec("BACKCHANNEL_CTL", _x(BackchannelCtlArgs), STATUS),
    c.OP_BIND_CONN_TO_SESSION: OpSpec(
        "BIND_CONN_TO_SESSION", _x(BindConnArgs), ok(_x(BindConnResok))
    ),
    c.OP_EXCHANGE_ID: OpSpec("EXCHANGE_ID", _x(ExchangeIdArgs), ok(_x(ExchangeIdResok))),
    c.OP_CREATE_SESSION: OpSpec(
        "CREATE_SESSION", _x(CreateSessionArgs), ok(_x(CreateSessionResok))
    ),
    c.OP_DESTROY_SESSION: OpSpec("DESTROY_SESSION", _x(SessionArgs), STATUS),
    c.OP_FREE_STATEID: OpSpec("FREE_STATEID", _x(StateidArgs), STATUS),
    c.OP_GET_DIR_DELEGATION: OpSpec(
        "GET_DIR_DELEGATION", _x(GetDirDelegationArgs), ok(GDD_NON_FATAL)
    ),
    c.OP_GETDEVICEINFO: OpSpec(
        "GETDEVICEINFO",
        _x(GetDeviceInfoArgs),
        ok(_x(GetDeviceInfoResok), NFS4ERR_TOOSMALL=U32),
    ),
    c.OP_GETDEVICELIST: OpSpec("GETDEVICELIST", _x(GetDeviceListArgs), ok(_x(GetDeviceListResok))),
    c.OP_LAYOUTCOMMIT: OpSpec("LAYOUTCOMMIT", _x(LayoutCommitArgs), ok(NEWSIZE)),
    c.OP_LAYOUTGET: OpSpec(
        "LAYOUTGET", _x(LayoutGetArgs), ok(_x(LayoutGetResok), NFS4ERR_LAYOUTTRYLATER=BOOL)
    ),
    c.OP_LAYOUTRETURN: OpSpec("LAYOUTRETURN", _x(LayoutReturnArgs), ok(LAYOUTRETURN_STATEID)),
    c.OP_SECINFO_NO_NAME: OpSpec("SECINFO_NO_NAME", _x(SecinfoNoNameArgs), SECINFO_RES),
    c.OP_SEQUENCE: OpSpec("SEQUENCE", _x(SequenceArgs), ok(_x(SequenceResok))),
    c.OP_SET_SSV: OpSpec("SET_SSV", _x(SetSsvArgs), ok(Opaque(OWNER_LIMIT))),
    c.OP_TEST_STATEID: OpSpec(
        "TEST_STATEID", _x(TestStateidArgs), ok(Array(NFSSTAT, TEST_STATEIDS))
    ),
    c.OP_WANT_DELEGATION: OpSpec("WANT_DELEGATION", _x(WantDelegationArgs), ok(OPEN_DELEGATION)),
    c.OP_DESTROY_CLIENTID: OpSpec("DESTROY_CLIENTID", _x(ClientidArgs), STATUS),
    c.OP_RECLAIM_COMPLETE: OpSpec("RECLAIM_COMPLETE", _x(ReclaimCompleteArgs), STATUS),
    c.OP_ALLOCATE: OpSpec("ALLOCATE", _x(RangeArgs), STATUS),
    c.OP_COPY: OpSpec(
        "COPY", _x(CopyArgs), ok(_x(CopyResok), NFS4ERR_OFFLOAD_NO_REQS=COPY_REQUIREMENTS)
    ),
    c.OP_COPY_NOTIFY: OpSpec("COPY_NOTIFY", _x(CopyNotifyArgs), ok(_x(CopyNotifyResok))),
    c.OP_DEALLOCATE: OpSpec("DEALLOCATE", _x(RangeArgs), STATUS),
    c.OP_IO_ADVISE: OpSpec("IO_ADVISE", _x(IoAdviseArgs), ok(BITMAP)),
    c.OP_LAYOUTERROR: OpSpec("LAYOUTERROR", _x(LayoutErrorArgs), STATUS),
    c.OP_LAYOUTSTATS: OpSpec("LAYOUTSTATS", _x(LayoutStatsArgs), STATUS),
    c.OP_OFFLOAD_CANCEL: OpSpec("OFFLOAD_CANCEL", _x(StateidArgs), STATUS),
    c.OP_OFFLOAD_STATUS: OpSpec("OFFLOAD_STATUS", _x(StateidArgs), ok(_x(OffloadStatusResok))),
    c.OP_READ_PLUS: OpSpec("READ_PLUS", _x(ReadPlusArgs), ok(_x(ReadPlusResok))),
    c.OP_SEEK: OpSpec("SEEK", _x(SeekArgs), ok(_x(SeekResok))),
    c.OP_WRITE_SAME: OpSpec("WRITE_SAME", _x(WriteSameArgs), ok(WRITE_RESPONSE)),
    c.OP_CLONE: OpSpec("CLONE", _x(CloneArgs), STATUS),
    c.OP_GETXATTR: OpSpec("GETXATTR", _x(GetxattrArgs), ok(Opaque(ATTRLIST_LIMIT))),
    c.OP_SETXATTR: OpSpec("SETXATTR", _x(SetxattrArgs), ok(CHANGE_INFO)),
    c.OP_LISTXATTRS: OpSpec("LISTXATTRS", _x(ListxattrsArgs), ok(_x(ListxattrsResok))),
    c.OP_REMOVEXATTR: OpSpec("REMOVEXATTR", _x(GetxattrArgs), ok(CHANGE_INFO)),
}
ILLEGAL = OpSpec("ILLEGAL", VOID, STATUS)

#: nfs_argop4 and nfs_resop4 as unions (eager decoding, tests, the fuzz).
ARGOP = Union(U32, {n: s.args for n, s in OPS.items()} | {c.OP_ILLEGAL: VOID}, name="nfs_argop4")
RESOP = Union(U32, {n: s.res for n, s in OPS.items()} | {c.OP_ILLEGAL: STATUS}, name="nfs_resop4")

#: The most operations a COMPOUND may carry before its decoding stops
#: (sessions bound it further with ca_maxoperations).
MAX_COMPOUND_OPS = 1024


@attrs.frozen(slots=True)
class CompoundHeader:
    """The part of COMPOUND4args before the operations; C{u} is at the first one."""

    tag: bytes
    minorversion: int
    count: int
    u: Unpacker
    size: int


def read_header(u: Unpacker) -> CompoundHeader:
    """
    Decode a COMPOUND's tag, minor version and operation count.

    @raise XDRError: truncated, or more operations than the record could hold.
    """
    tag = u.opaque(NAME_LIMIT)
    minor = u.u32()
    count = u.u32()
    if count > MAX_COMPOUND_OPS or count * 4 > u.remaining():
        raise XDRError(f"COMPOUND of {count} operations")
    return CompoundHeader(tag, minor, count, u, u.end)


def read_op(u: Unpacker) -> tuple[int, Any]:
    """
    The next operation: (opnum, args). An opnum this codec does not know is
    returned with args L{None} (the server answers OP_ILLEGAL).

    @raise XDRError: the arguments do not decode.
    """
    op = u.u32()
    spec = OPS.get(op)
    if spec is None:
        return op, None
    return op, spec.args.dec(u)


# A COMPOUND larger than this is not walked for reply_size (it carries a
# WRITE's data, whose reply is small; decoding it twice would cost a copy).
_ESTIMATE_WALK_MAX = 64 * 1024


def reply_size(h: CompoundHeader) -> int:
    """
    How large a COMPOUND's reply may grow: the counts its READ, READ_PLUS
    and READDIR operations ask for (for the per-connection byte bound,
    L{claudefs_gateway.rpc.server.RPCStreamProtocol}). An estimate: the
    operations are decoded from a copy of the position, and the walk stops at
    the first one that does not decode (the COMPOUND will fail there) or at
    an operation this codec does not know.
    """
    if h.u.remaining() > _ESTIMATE_WALK_MAX:
        return 0
    u = Unpacker(h.u.data, h.u.pos, h.u.end)
    total = 0
    try:
        for _ in range(h.count):
            op, args = read_op(u)
            if op not in OPS:
                break
            if op == c.OP_READ or op == c.OP_READ_PLUS:
                total += args.count
            elif op == c.OP_READDIR:
                total += args.maxcount
    except (XDRError, ValueError, struct.error):
        pass
    return total


def encode_compound(tag: bytes, minor: int, ops: Sequence[tuple[int, Any]]) -> bytes:
    """COMPOUND4args (clients and tests)."""
    p = Packer()
    p.opaque(tag)
    p.u32(minor)
    p.u32(len(ops))
    for op, args in ops:
        p.u32(op)
        spec = OPS.get(op)
        if spec is not None:
            spec.args.enc(p, args)
    return p.bytes()


@attrs.frozen(slots=True)
class Compound:
    tag: bytes
    minorversion: int
    ops: list[tuple[int, Any]]


def decode_compound(data: bytes) -> Compound:
    """
    COMPOUND4args, every operation at once (tests and fuzzing; the server
    decodes one operation at a time). @raise XDRError.
    """
    u = Unpacker(data)
    h = read_header(u)
    ops = []
    for _ in range(h.count):
        op, args = read_op(u)
        if op not in OPS and op != c.OP_ILLEGAL:
            raise XDRError(f"unknown operation {op}")
        ops.append((op, args))
    u.done()
    return Compound(h.tag, h.minorversion, ops)


@attrs.frozen(slots=True)
class CompoundResult:
    status: int
    tag: bytes
    results: list[tuple[int, Arm]]


def encode_result(op: int, res: Arm, p: Packer) -> None:
    """One nfs_resop4 into C{p}."""
    p.u32(op)
    spec = OPS.get(op, ILLEGAL)
    spec.res.enc(p, res)


def decode_compound_result(u: Unpacker) -> CompoundResult:
    """COMPOUND4res (clients and tests). @raise XDRError."""
    status = u.u32()
    tag = u.opaque(NAME_LIMIT)
    n = u.u32()
    if n > MAX_COMPOUND_OPS or n * 8 > u.remaining():
        raise XDRError(f"COMPOUND4res of {n} results")
    results = []
    for _ in range(n):
        op = u.u32()
        spec = OPS.get(op, ILLEGAL if op == c.OP_ILLEGAL else None)
        if spec is None:
            raise XDRError(f"result of unknown operation {op}")
        results.append((op, spec.res.dec(u)))
    return CompoundResult(status, tag, results)


# -- the back channel (RFC 8881 §20, RFC 7862 §16) -----------------------------------


@xdr_struct
@attrs.frozen(slots=True)
class ReferringCall:
    sequenceid: int = field(U32)
    slotid: int = field(U32)


@xdr_struct
@attrs.frozen(slots=True)
class ReferringCallList:
    sessionid: bytes = field(SESSIONID)
    calls: list[ReferringCall] = field(Array(ReferringCall.XDR, SMALL_ARRAY))  # type: ignore[attr-defined]


@xdr_struct
@attrs.frozen(slots=True)
class CbSequenceArgs:
    sessionid: bytes = field(SESSIONID)
    sequenceid: int = field(U32)
    slotid: int = field(U32)
    highest_slotid: int = field(U32)
    cachethis: bool = field(BOOL)
    referring_call_lists: list[ReferringCallList] = field(
        Array(ReferringCallList.XDR, SMALL_ARRAY)  # type: ignore[attr-defined]
    )


@xdr_struct
@attrs.frozen(slots=True)
class CbSequenceResok:
    sessionid: bytes = field(SESSIONID)
    sequenceid: int = field(U32)
    slotid: int = field(U32)
    highest_slotid: int = field(U32)
    target_highest_slotid: int = field(U32)


@xdr_struct
@attrs.frozen(slots=True)
class CbRecallArgs:
    stateid: StateId = field(STATEID)
    truncate: bool = field(BOOL)
    fh: bytes = field(FH)


@xdr_struct
@attrs.frozen(slots=True)
class CbGetattrArgs:
    fh: bytes = field(FH)
    attr_request: list[int] = field(BITMAP)


@xdr_struct
@attrs.frozen(slots=True)
class CbNotifyLockArgs:
    fh: bytes = field(FH)
    lock_owner: StateOwner = field(STATE_OWNER)


OFFLOAD_INFO = Union(NFSSTAT, {c.NFS4_OK: WRITE_RESPONSE}, default=U64, name="offload_info4")


@xdr_struct
@attrs.frozen(slots=True)
class CbOffloadArgs:
    fh: bytes = field(FH)
    stateid: StateId = field(STATEID)
    info: Arm = field(OFFLOAD_INFO)


@xdr_struct
@attrs.frozen(slots=True)
class LayoutRecallFile:
    """layoutrecall_file4."""

    fh: bytes = field(FH)
    offset: int = field(U64)
    length: int = field(U64)
    stateid: StateId = field(STATEID)


@xdr_struct
@attrs.frozen(slots=True)
class Fsid4:
    major: int = field(U64)
    minor: int = field(U64)


LAYOUTRECALL = Union(
    U32,
    {
        c.LAYOUTRECALL4_FILE: LayoutRecallFile.XDR,  # type: ignore[attr-defined]
        c.LAYOUTRECALL4_FSID: Fsid4.XDR,  # type: ignore[attr-defined]
        c.LAYOUTRECALL4_ALL: VOID,
    },
    name="layoutrecall4",
)


@xdr_struct
@attrs.frozen(slots=True)
class CbLayoutRecallArgs:
    type: int = field(U32)
    iomode: int = field(U32)
    changed: bool = field(BOOL)
    recall: Arm = field(LAYOUTRECALL)


CB_OPS: dict[int, OpSpec] = {
    c.OP_CB_LAYOUTRECALL: OpSpec("CB_LAYOUTRECALL", _x(CbLayoutRecallArgs), STATUS),
    c.OP_CB_SEQUENCE: OpSpec("CB_SEQUENCE", _x(CbSequenceArgs), ok(_x(CbSequenceResok))),
    c.OP_CB_GETATTR: OpSpec("CB_GETATTR", _x(CbGetattrArgs), ok(FATTR)),
    c.OP_CB_RECALL: OpSpec("CB_RECALL", _x(CbRecallArgs), STATUS),
    c.OP_CB_NOTIFY_LOCK: OpSpec("CB_NOTIFY_LOCK", _x(CbNotifyLockArgs), STATUS),
    c.OP_CB_OFFLOAD: OpSpec("CB_OFFLOAD", _x(CbOffloadArgs), STATUS),
}


def encode_cb_compound(tag: bytes, minor: int, ident: int, ops: Sequence[tuple[int, Any]]) -> bytes:
    """CB_COMPOUND4args (the server calls its clients with these)."""
    p = Packer()
    p.opaque(tag)
    p.u32(minor)
    p.u32(ident)
    p.u32(len(ops))
    for op, args in ops:
        p.u32(op)
        CB_OPS[op].args.enc(p, args)
    return p.bytes()


def decode_cb_compound(data: bytes) -> tuple[bytes, int, int, list[tuple[int, Any]]]:
    """CB_COMPOUND4args (tests playing the client). @raise XDRError."""
    u = Unpacker(data)
    tag = u.opaque(NAME_LIMIT)
    minor = u.u32()
    ident = u.u32()
    n = u.u32()
    if n > SMALL_ARRAY:
        raise XDRError(f"CB_COMPOUND of {n} operations")
    ops = []
    for _ in range(n):
        op = u.u32()
        spec = CB_OPS.get(op)
        if spec is None:
            raise XDRError(f"unknown callback operation {op}")
        ops.append((op, spec.args.dec(u)))
    u.done()
    return tag, minor, ident, ops


def encode_cb_result(status: int, tag: bytes, results: Sequence[tuple[int, Arm]]) -> bytes:
    """CB_COMPOUND4res (tests playing the client)."""
    p = Packer()
    p.u32(status)
    p.opaque(tag)
    p.u32(len(results))
    for op, res in results:
        p.u32(op)
        CB_OPS[op].res.enc(p, res)
    return p.bytes()


def decode_cb_result(u: Unpacker) -> CompoundResult:
    """CB_COMPOUND4res. @raise XDRError."""
    status = u.u32()
    tag = u.opaque(NAME_LIMIT)
    n = u.u32()
    if n > SMALL_ARRAY or n * 8 > u.remaining():
        raise XDRError(f"CB_COMPOUND4res of {n} results")
    results = []
    for _ in range(n):
        op = u.u32()
        spec = CB_OPS.get(op)
        if spec is None:
            raise XDRError(f"result of unknown callback operation {op}")
        results.append((op, spec.res.dec(u)))
    return CompoundResult(status, tag, results)
