# -*- test-case-name: tests.s3.test_access -*-
"""
Access control: ACLs, bucket policies, public access blocks, ownership
controls, and the gate anonymous and policy-denied requests stop at
(docs/s3.rst "Access control").

Every request runs as its caller's uid and gids (an anonymous one as the S3
export's anonymous uid) and the vfs checks the files' owner and mode, the
permissions NFS and SMB share. On top of that, before an operation runs:

 - a bucket policy's Deny statement that matches refuses it (403), whoever
   sends it (root excepted);
 - an anonymous request goes on only if the bucket's policy allows it, or the
   ACL of what it touches grants C{AllUsers} that permission - unless the
   bucket's public access block says to ignore such grants.

ACLs are the files' modes, read and written through L{claudefs_gateway.s3.acl}.
"""

from __future__ import annotations

from typing import Any

from claudefs_gateway import errors
from claudefs_gateway.fstypes import Attributes
from claudefs_gateway.s3 import acl, tagging, xmlio
from claudefs_gateway.s3.bucketconf import BucketConf
from claudefs_gateway.s3.call import Call
from claudefs_gateway.s3.errors import S3Error
from claudefs_gateway.s3.keys import Key
from claudefs_gateway.s3.ops.objects import ObjectOps
from claudefs_gateway.s3.owners import canonical_id
from claudefs_gateway.s3.policy import Policy, action_for

__all__ = ["AccessOps"]

_OWNERSHIP = ("BucketOwnerEnforced", "BucketOwnerPreferred", "ObjectWriter")
_PAB_FIELDS = ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets")
# What an anonymous request needs AllUsers to have been granted, by operation.
_PUBLIC_NEEDS = {
    "GetObject": ("object", "READ"),
    "HeadObject": ("object", "READ"),
    "GetObjectTagging": ("object", "READ"),
    "ListObjects": ("bucket", "READ"),
    "ListObjectsV2": ("bucket", "READ"),
    "ListObjectVersions": ("bucket", "READ"),
    "HeadBucket": ("bucket", "READ"),
    "PutObject": ("bucket", "WRITE"),
    "PostObject": ("bucket", "WRITE"),
    "DeleteObject": ("bucket", "WRITE"),
    "DeleteObjects": ("bucket", "WRITE"),
    "CreateMultipartUpload": ("bucket", "WRITE"),
    "UploadPart": ("bucket", "WRITE"),
    "CompleteMultipartUpload": ("bucket", "WRITE"),
    "AbortMultipartUpload": ("bucket", "WRITE"),
}


class AccessOps(ObjectOps):
    """ACLs, policies, public access blocks and ownership controls."""

    # -- the gate ----------------------------------------------------------------------

    async def _authorize(self, call: Call) -> None:
        """
        Refuse what a bucket policy denies, and anonymous requests nothing grants.

        @raise S3Error: AccessDenied.
        """
        anonymous = call.user is None
        if call.bucket is None:
            if anonymous:
                raise S3Error("AccessDenied")
            return
        tree = self._tree()
        try:
            # As the caller first: the handler's own lookup (kept on the
            # call, one lookup a request); as root if the caller may not
            # find it, so that the policy still decides what to refuse.
            b = call.bucket_attrs = await tree.bucket(call.caller, call.bucket)
        except (S3Error, errors.FSError):
            try:
                b = await tree.bucket(tree.root_caller, call.bucket)
            except S3Error:
                return  # the operation reports the missing bucket
        conf = await tree.bucket_settings(b)
        decision = None
        if conf.policy:
            decision = await self._policy_decision(call, b, conf)
            if decision == "deny" and not call.caller.cred.is_root:
                raise S3Error("AccessDenied", "Access denied by the bucket policy")
        if not anonymous:
            return
        pab = conf.public_access_block or {}
        if decision == "allow" and not (
            pab.get("RestrictPublicBuckets") and self._policy_public(conf, call.bucket)
        ):
            return
        need = _PUBLIC_NEEDS.get(call.op)
        if need is not None and not pab.get("IgnorePublicAcls"):
            level, permission = need
            bucket_public = frozenset((conf.acl or {}).get("public") or ())
            public = bucket_public
            if level == "object":
                found = await self._object_public(call, b)
                # No such object: a caller who may list the bucket may learn
                # that (404); others get 403, as from AWS.
                if found is not None:
                    public = found
                elif permission != "READ":
                    public = frozenset()
            if permission in public or "FULL_CONTROL" in public:
                return
        raise S3Error("AccessDenied")

    async def _object_public(self, call: Call, bucket: Attributes) -> frozenset[str] | None:
        """What the object's ACL grants everyone (None: there is no such object)."""
        tree = self._tree()
        try:
            a = await tree.lookup(tree.root_caller, bucket, self._key(call))
        except S3Error:
            return None
        return acl.decode_public(await tree.vfs.meta_get(tree.root_caller, a.ino, acl.ACL_KEY))

    def _policy_public(self, conf: BucketConf, bucket: str) -> bool:
        try:
            return Policy(conf.policy, bucket).public if conf.policy else False
        except S3Error:
            return False

    async def _policy_decision(
        self, call: Call, bucket: Attributes, conf: BucketConf
    ) -> str | None:
        assert call.bucket is not None and conf.policy is not None
        try:
            policy = Policy(conf.policy, call.bucket)
        except S3Error:
            return None
        versioned = call.query.get("versionId") is not None
        action = action_for(call.op, versioned)
        if action is None:
            return None
        resource = f"arn:aws:s3:::{call.bucket}"
        if call.key is not None:
            resource += "/" + call.key
        ids: list[str] = []
        if call.user is not None:
            uid = call.caller.cred.uid
            ids = [canonical_id(uid), str(uid), call.user.name]
        tags: dict[str, str] | None = None

        async def existing_tags() -> dict[str, str]:
            nonlocal tags
            if tags is None:
                tags = {}
                if call.key is not None:
                    tree = self._tree()
                    try:
                        a = await tree.lookup(tree.root_caller, bucket, Key(call.key))
                        tags = tagging.decode(
                            await tree.vfs.meta_get(tree.root_caller, a.ino, tagging.TAGS_KEY)
                        )
                    except S3Error:
                        pass
            return tags

        # Conditions on existing tags need the object's tags: fetch them once, if asked for.
        needs_tags = any(
            key.startswith("s3:existingobjecttag/")
            for st in policy.statements
            for _, key, _ in st.conditions
        )
        known = await existing_tags() if needs_tags else {}
        request_tags: dict[str, str] = {}
        if call.header("x-amz-tagging"):
            try:
                request_tags = dict(tagging.parse_header(call.header("x-amz-tagging") or ""))
            except S3Error:
                request_tags = {}

        def context(key: str) -> list[str] | None:
            q = call.query
            if key == "aws:sourceip":
                return [call.source] if call.source else None
            if key == "aws:securetransport":
                return ["true" if call.request.isSecure() else "false"]
            if key == "aws:username":
                return [call.user.name] if call.user is not None else None
            if key == "aws:userid":
                return [str(call.caller.cred.uid)] if call.user is not None else None
            if key == "aws:principaltype":
                return ["Anonymous" if call.user is None else "User"]
            if key == "aws:referer":
                v = call.header("referer")
                return [v] if v is not None else None
            if key == "aws:useragent":
                v = call.header("user-agent")
                return [v] if v is not None else None
            if key in ("aws:currenttime", "aws:epochtime"):
                return [str(int(self.clock.seconds()))]
            if key == "s3:prefix":
                return [q["prefix"]] if "prefix" in q else None
            if key == "s3:delimiter":
                return [q["delimiter"]] if "delimiter" in q else None
            if key == "s3:max-keys":
                return [q["max-keys"]] if "max-keys" in q else None
            if key == "s3:versionid":
                return [q["versionId"]] if "versionId" in q else None
            if key.startswith("s3:x-amz-"):
                v = call.header(key[3:])
                return [v] if v is not None else None
            if key.startswith("s3:existingobjecttag/"):
                name = key.split("/", 1)[1]
                for k, v in known.items():
                    if k.lower() == name:
                        return [v]
                return None
            if key.startswith("s3:requestobjecttag/"):
                name = key.split("/", 1)[1]
                for k, v in request_tags.items():
                    if k.lower() == name:
                        return [v]
                return None
            if key == "s3:requestobjecttagkeys":
                return list(request_tags) or None
            if key == "s3:signatureversion":
                scheme = call.auth.scheme if call.auth is not None else ""
                return ["AWS4-HMAC-SHA256" if scheme.startswith("v4") else "AWS"]
            if key == "s3:authtype":
                scheme = call.auth.scheme if call.auth is not None else ""
                return ["REST-QUERY-STRING" if scheme.endswith("query") else "REST-HEADER"]
            return None

        return policy.evaluate(ids, action, resource, context)

    # -- ACLs --------------------------------------------------------------------------

    async def _acl_target(self, call: Call) -> tuple[Attributes, bool, BucketConf]:
        assert call.bucket is not None
        tree = self._tree()
        b = await tree.bucket(call.caller, call.bucket)
        conf = await tree.bucket_conf(b)
        if call.key is None:
            return b, True, conf
        a, _, call.version_id = await self._resolve(
            call, b, self._key(call), call.query.get("versionId")
        )
        return a, False, conf

    async def _get_acl(self, call: Call) -> None:
        tree = self._tree()
        a, is_dir, conf = await self._acl_target(call)
        if is_dir:
            public = frozenset((conf.acl or {}).get("public") or ())
        else:
            public = acl.decode_public(await tree.vfs.meta_get(call.caller, a.ino, acl.ACL_KEY))
        if a.uid != call.caller.cred.uid and not call.caller.cred.is_root:
            if not await tree.vfs.access(call.caller, a.ino, 0o4):
                raise S3Error("AccessDenied")
        users = tree.vfs.users
        grants = acl.grants_of(a.mode, a.uid, a.gid, is_dir, public, users)
        u = users.by_uid(a.uid)
        body = acl.render(a.uid, u.name if u is not None else str(a.uid), grants, users)
        req = call.request
        self._version_header(call)
        req.setResponseCode(200)
        req.setHeader(b"Content-Type", b"application/xml")
        req.setHeader(b"Content-Length", str(len(body)).encode())
        req.write(body)
        req.finish()

    async def _put_acl(self, call: Call) -> None:
        tree = self._tree()
        a, is_dir, conf = await self._acl_target(call)
        if a.uid != call.caller.cred.uid and not call.caller.cred.is_root:
            # WRITE_ACP is the owner's: the mode is the owner's to change.
            raise S3Error("AccessDenied")
        assert call.bucket is not None
        b = await tree.bucket(call.caller, call.bucket)
        grants = acl.from_headers(call.headers, canonical_id(a.uid), canonical_id(b.uid))
        raw = await self._read_small(call, 64 * 1024)
        if grants is None:
            if not raw.strip():
                raise S3Error("MissingSecurityHeader", "Your request was missing a required header")
            owner_id, grants = xmlio.parse_acl(raw)
            if owner_id is not None and owner_id != canonical_id(a.uid):
                raise S3Error("AccessDenied", "The ACL must name the current owner")
        elif raw.strip():
            raise S3Error("UnexpectedContent", "This request does not support content")
        self._check_acl_allowed(conf, grants, call.headers.get("x-amz-acl"))
        await self._apply_grants(call, a, grants, is_dir)
        self._empty(call, 200)

    async def op_GetBucketAcl(self, call: Call) -> None:
        await self._get_acl(call)

    async def op_PutBucketAcl(self, call: Call) -> None:
        await self._put_acl(call)

    async def op_GetObjectAcl(self, call: Call) -> None:
        await self._get_acl(call)

    async def op_PutObjectAcl(self, call: Call) -> None:
        await self._put_acl(call)

    # -- policies ----------------------------------------------------------------------

    async def op_GetBucketPolicy(self, call: Call) -> None:
        tree = self._tree()
        b = await self._owned(call)
        conf = await tree.bucket_conf(b)
        if not conf.policy:
            raise S3Error(
                "NoSuchBucketPolicy",
                "The bucket policy does not exist",
                BucketName=call.bucket or "",
            )
        body = conf.policy.encode("utf-8")
        req = call.request
        req.setResponseCode(200)
        req.setHeader(b"Content-Type", b"application/json")
        req.setHeader(b"Content-Length", str(len(body)).encode())
        req.write(body)
        req.finish()

    async def op_PutBucketPolicy(self, call: Call) -> None:
        assert call.bucket is not None
        tree = self._tree()
        b = await self._owned(call)
        raw = await self._read_small(call, 64 * 1024)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise S3Error("MalformedPolicy", "Policies must be UTF-8 JSON") from None
        policy = Policy(text, call.bucket)
        conf = await tree.bucket_conf(b)
        if (conf.public_access_block or {}).get("BlockPublicPolicy") and policy.public:
            raise S3Error(
                "AccessDenied", "The bucket's public access block refuses public policies"
            )
        conf.policy = text
        await tree.set_bucket_conf(call.caller, b, conf)
        self._empty(call, 204)

    async def op_DeleteBucketPolicy(self, call: Call) -> None:
        tree = self._tree()
        b = await self._owned(call)
        conf = await tree.bucket_conf(b)
        conf.policy = None
        await tree.set_bucket_conf(call.caller, b, conf)
        self._empty(call, 204)

    async def op_GetBucketPolicyStatus(self, call: Call) -> None:
        tree = self._tree()
        b = await self._owned(call)
        conf = await tree.bucket_conf(b)
        public = bool(conf.policy) and self._policy_public(conf, call.bucket or "")
        self._xml(call, xmlio.document("PolicyStatus", [("IsPublic", public)]))

    # -- public access block ----------------------------------------------------------

    async def op_GetPublicAccessBlock(self, call: Call) -> None:
        tree = self._tree()
        b = await self._owned(call)
        conf = await tree.bucket_conf(b)
        if conf.public_access_block is None:
            raise S3Error(
                "NoSuchPublicAccessBlockConfiguration",
                "The public access block configuration was not found",
                BucketName=call.bucket or "",
            )
        fields: list[tuple[str, Any]] = [
            (f, bool(conf.public_access_block.get(f))) for f in _PAB_FIELDS
        ]
        self._xml(call, xmlio.document("PublicAccessBlockConfiguration", fields))

    async def op_PutPublicAccessBlock(self, call: Call) -> None:
        tree = self._tree()
        b = await self._owned(call)
        values = xmlio.parse_flags(
            await self._read_small(call, 64 * 1024), "PublicAccessBlockConfiguration", _PAB_FIELDS
        )
        conf = await tree.bucket_conf(b)
        conf.public_access_block = values
        await tree.set_bucket_conf(call.caller, b, conf)
        self._empty(call, 200)

    async def op_DeletePublicAccessBlock(self, call: Call) -> None:
        tree = self._tree()
        b = await self._owned(call)
        conf = await tree.bucket_conf(b)
        conf.public_access_block = None
        await tree.set_bucket_conf(call.caller, b, conf)
        self._empty(call, 204)

    # -- ownership controls -------------------------------------------------------------

    async def op_GetBucketOwnershipControls(self, call: Call) -> None:
        tree = self._tree()
        b = await self._owned(call)
        conf = await tree.bucket_conf(b)
        if conf.ownership is None:
            raise S3Error(
                "OwnershipControlsNotFoundError",
                "The bucket ownership controls were not found",
                BucketName=call.bucket or "",
            )
        self._xml(
            call,
            xmlio.document("OwnershipControls", [("Rule", [("ObjectOwnership", conf.ownership)])]),
        )

    async def op_PutBucketOwnershipControls(self, call: Call) -> None:
        tree = self._tree()
        b = await self._owned(call)
        value = xmlio.parse_ownership(await self._read_small(call, 64 * 1024))
        if value not in _OWNERSHIP:
            raise S3Error("MalformedXML", "ObjectOwnership must be one of " + ", ".join(_OWNERSHIP))
        conf = await tree.bucket_conf(b)
        if value == "BucketOwnerEnforced" and (b.mode & 0o066 or (conf.acl or {}).get("public")):
            # As AWS: ACLs are switched off only once the bucket's grants no one else.
            raise S3Error(
                "InvalidBucketAclWithObjectOwnership",
                "Bucket cannot have ACLs set with ObjectOwnership's BucketOwnerEnforced setting",
            )
        conf.ownership = value
        await tree.set_bucket_conf(call.caller, b, conf)
        self._empty(call, 200)

    async def op_DeleteBucketOwnershipControls(self, call: Call) -> None:
        tree = self._tree()
        b = await self._owned(call)
        conf = await tree.bucket_conf(b)
        conf.ownership = None
        await tree.set_bucket_conf(call.caller, b, conf)
        self._empty(call, 204)
