#!/usr/bin/env python3
"""An Iceberg REST catalog server for ticklake's tests of `lake.catalog = "rest"`.

    rest_catalog.py --dir DIR [--warehouse URI] [--credential ID:SECRET]
                    [--prefix P] [--property KEY=VALUE ...]
                    [--warehouse-name NAME] [--hold-first-rewrite-ms N]
                    [--sigv4 KEY_ID:SECRET:REGION:SERVICE] [--base-path P]
                    [--table-buckets]

Serves the REST catalog protocol (the endpoints of Iceberg's OpenAPI spec
that a table client calls: config, OAuth2 tokens, namespaces, tables,
commits, register, rename) on a free 127.0.0.1 port, and prints
`rest catalog listening on http://127.0.0.1:PORT` on stdout once it
answers. Behind it is pyiceberg's SQL catalog on SQLite (DIR/catalog.db):
pyiceberg applies each commit's requirements and updates and writes the
metadata file, so the server does what a catalog server does, with the
commit semantics of the reference implementation (a failed requirement is
409 CommitFailedException; the catalog's pointer is swapped with a
compare-and-set).

Why a script: the established servers (Polaris, Lakekeeper, Nessie,
Gravitino, Iceberg's reference fixture) need a JVM and Maven artifacts or a
container image, none of which a test machine here installs from Debian,
PyPI or npm; pyiceberg is already in the test virtualenv.

Options:
  --warehouse   where new tables go (default file://DIR/warehouse)
  --credential  OAuth2 client credentials the server accepts. With it,
                every request but /v1/config and /v1/oauth/tokens needs
                `Authorization: Bearer <token>` of a token the server
                issued (401 otherwise), as a secured server does.
  --prefix      a path prefix the server hands out in /v1/config's
                overrides (`prefix`), as servers with several warehouses
                do; requests then come as /v1/<prefix>/namespaces/…
  --property    more pyiceberg catalog properties (s3.endpoint and the
                like, for a warehouse on an object store)
  --warehouse-name
                the name clients must ask for (`/v1/config?warehouse=NAME`,
                404 otherwise), as servers that name their warehouses
                (Polaris, Lakekeeper) do; --warehouse stays where the
                tables go
  --hold-first-rewrite-ms
                fault injection: the first commit adding a `replace` or
                `delete` snapshot (a compaction, a retention) waits this
                long before the server checks it, logging `holding a
                rewrite commit` first, so a test can land an append in
                between and see the rewrite refused and rebased
  --sigv4       every request must be signed with AWS Signature Version 4
                by KEY_ID's SECRET for REGION and SERVICE, as AWS's Iceberg
                REST endpoints (Glue, S3 Tables) require: the signature is
                checked with botocore's signer (AWS's own Python SDK), the
                body against its signed SHA-256, and the date against the
                clock (15 minutes either way); 403 otherwise, with AWS's
                error names. It replaces --credential.
  --base-path   the catalog is served under this path (Glue's is
                /iceberg), so requests come as /P/v1/…
  --table-buckets
                each table created without a location gets a bucket of its
                own, `s3://<uuid>--table-s3`, made on the S3 server of the
                `s3.endpoint` property, as S3 Tables does: the tables are
                then in no bucket a client was told of beforehand

Every request is logged on stderr with its status. The server stops on
SIGTERM or SIGINT.
"""

import argparse
import datetime
import hashlib
import hmac
import json
import os
import secrets
import signal
import sys
import threading
import traceback
import urllib.parse
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pyiceberg.catalog.rest import CreateTableRequest, RegisterTableRequest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import (
    CommitFailedException,
    NamespaceAlreadyExistsError,
    NamespaceNotEmptyError,
    NoSuchNamespaceError,
    NoSuchTableError,
    TableAlreadyExistsError,
)
from pyiceberg.table import CommitTableRequest

# The namespace levels' separator in a path segment (the spec's %1F).
UNIT_SEPARATOR = "\x1f"


class Fail(Exception):
    """An error answered with the spec's ErrorModel."""

    def __init__(self, code, kind, message):
        super().__init__(message)
        self.code, self.kind, self.message = code, kind, message


ERRORS = [
    (NoSuchNamespaceError, 404, "NoSuchNamespaceException"),
    (NoSuchTableError, 404, "NoSuchTableException"),
    (NamespaceAlreadyExistsError, 409, "AlreadyExistsException"),
    (TableAlreadyExistsError, 409, "AlreadyExistsException"),
    (NamespaceNotEmptyError, 409, "NamespaceNotEmptyException"),
    (CommitFailedException, 409, "CommitFailedException"),
]


def namespace_of(segment):
    return tuple(urllib.parse.unquote(segment).split(UNIT_SEPARATOR))


def table_result(table):
    return {
        "metadata-location": table.metadata_location,
        "metadata": json.loads(table.metadata.model_dump_json()),
        "config": {},
    }


def with_field_ids(spec):
    """A partition spec as iceberg-rust sends it (unbound: its fields may
    lack ids) with ids, which pyiceberg's model requires; the catalog
    assigns fresh ones on create anyway."""
    if not spec:
        return spec
    for i, field in enumerate(spec.get("fields", [])):
        field.setdefault("field-id", 1000 + i)
    spec.setdefault("spec-id", 0)
    return spec


def is_rewrite(body):
    """Whether a request body is a commit adding a replace or delete snapshot."""
    try:
        updates = json.loads(body).get("updates") or []
    except (ValueError, AttributeError):
        return False
    return any(
        u.get("action") == "add-snapshot"
        and (u.get("snapshot") or {}).get("summary", {}).get("operation") in ("replace", "delete")
        for u in updates
        if isinstance(u, dict)
    )


class Catalog:
    def __init__(self, args):
        warehouse = args.warehouse or "file://" + os.path.join(os.path.abspath(args.dir), "warehouse")
        props = {"uri": "sqlite:///" + os.path.join(os.path.abspath(args.dir), "catalog.db"), "warehouse": warehouse}
        for kv in args.property:
            key, _, value = kv.partition("=")
            props[key] = value
        self.sql = SqlCatalog("rest", **props)
        self.credential = args.credential
        self.prefix = args.prefix
        self.warehouse_name = args.warehouse_name
        self.tokens = set()
        self.hold_ms = args.hold_first_rewrite_ms
        self.sigv4 = args.sigv4.split(":", 3) if args.sigv4 else None
        self.base = [p for p in (args.base_path or "").split("/") if p]
        self.table_buckets = args.table_buckets
        self.s3_endpoint = props.get("s3.endpoint")
        if self.table_buckets and not self.s3_endpoint:
            sys.exit("--table-buckets needs --property s3.endpoint=URL")
        # One request at a time against the catalog: SQLite and a test
        # server's load need no more, and each commit's read-check-write
        # is then trivially atomic besides pyiceberg's own compare-and-set.
        self.lock = threading.Lock()

    def route(self, method, path, query, body, headers):
        parts = [p for p in path.split("/") if p]
        if parts[: len(self.base)] != self.base:
            raise Fail(404, "NotFoundException", f"no route {path}: the catalog is under /{'/'.join(self.base)}")
        parts = parts[len(self.base) :]
        if parts[:1] != ["v1"]:
            raise Fail(404, "NotFoundException", f"no route {path}")
        parts = parts[1:]
        if parts == ["config"] and method == "GET":
            asked = query.get("warehouse", [None])[0]
            if self.warehouse_name and asked != self.warehouse_name:
                raise Fail(404, "NotFoundException", f"no warehouse {asked!r} here")
            overrides = {"prefix": self.prefix} if self.prefix else {}
            return 200, {"defaults": {}, "overrides": overrides}
        if parts == ["oauth", "tokens"] and method == "POST":
            return self.token(body)
        self.authorize(headers)
        if self.prefix:
            if parts[:1] != [self.prefix]:
                raise Fail(404, "NotFoundException", f"no route {path}: the prefix is {self.prefix}")
            parts = parts[1:]
        if self.hold_ms and method == "POST" and is_rewrite(body):
            hold, self.hold_ms = self.hold_ms, 0
            sys.stderr.write(f"rest catalog: holding a rewrite commit {hold} ms\n")
            sys.stderr.flush()
            threading.Event().wait(hold / 1000)
        with self.lock:
            return self.dispatch(method, parts, query, body)

    def token(self, body):
        form = urllib.parse.parse_qs(body.decode())
        given = f"{form.get('client_id', [''])[0]}:{form.get('client_secret', [''])[0]}"
        if form.get("grant_type", [""])[0] != "client_credentials" or given != (self.credential or given):
            return 401, {"error": "invalid_client", "error_description": "unknown client credentials"}
        token = secrets.token_hex(16)
        self.tokens.add(token)
        return 200, {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": 3600,
            "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
        }

    def verify_sigv4(self, method, raw_path, headers, body):
        """Checks an AWS SigV4 signature as AWS does, with botocore computing
        what the signature of the request must be."""
        if not self.sigv4:
            return
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest, HTTPHeaders
        from botocore.credentials import Credentials

        key_id, secret, region, service = self.sigv4
        auth = headers.get("Authorization", "")
        fields = {}
        if auth.startswith("AWS4-HMAC-SHA256 "):
            for part in auth[len("AWS4-HMAC-SHA256 ") :].split(","):
                name, _, value = part.strip().partition("=")
                fields[name] = value
        if not {"Credential", "SignedHeaders", "Signature"} <= fields.keys():
            raise Fail(403, "MissingAuthenticationTokenException", "missing Authentication Token: a SigV4 signature is required")
        scope = fields["Credential"].split("/")
        if len(scope) != 5 or scope[4] != "aws4_request":
            raise Fail(403, "IncompleteSignatureException", f"malformed credential scope {fields['Credential']!r}")
        if scope[0] != key_id:
            raise Fail(403, "UnrecognizedClientException", "the security token included in the request is invalid")
        if scope[2:4] != [region, service]:
            raise Fail(403, "InvalidSignatureException", f"credential should be scoped to {region}/{service}, not {'/'.join(scope[2:4])}")
        amz_date = headers.get("X-Amz-Date", "")
        try:
            when = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
        except ValueError:
            raise Fail(403, "IncompleteSignatureException", f"bad X-Amz-Date {amz_date!r}") from None
        skew = abs((datetime.datetime.now(datetime.timezone.utc) - when).total_seconds())
        if skew > 900 or scope[1] != amz_date[:8]:
            raise Fail(403, "InvalidSignatureException", "signature expired or dated wrongly")
        # Optional for services other than S3 (botocore hashes the body
        # itself then); when sent, it is what the signature covers.
        digest = headers.get("X-Amz-Content-SHA256")
        if digest is not None and digest != hashlib.sha256(body).hexdigest():
            raise Fail(403, "InvalidSignatureException", "X-Amz-Content-SHA256 is not the body's SHA-256")
        names = fields["SignedHeaders"].split(";")
        if "host" not in names or "x-amz-date" not in names or any(n not in headers for n in names):
            raise Fail(403, "InvalidSignatureException", f"signed headers {names} must include host and x-amz-date, and be sent")

        class AsSigned(SigV4Auth):
            # The client chose which headers to sign: canonicalize those.
            def headers_to_sign(self, request):
                out = HTTPHeaders()
                for n in names:
                    out[n] = request.headers[n]
                return out

        # The query decoded: the canonical form encodes each name and
        # value anew, however the client encoded them.
        path, _, query = raw_path.partition("?")
        request = AWSRequest(
            method=method,
            url=f"http://{headers['Host']}{path}",
            params=urllib.parse.parse_qsl(query, keep_blank_values=True),
            data=body,
            headers={n: ", ".join(headers.get_all(n)) for n in names if n != "host"} | {"host": headers["Host"]},
        )
        request.context["timestamp"] = amz_date
        signer = AsSigned(Credentials(key_id, secret), service, region)
        expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
        if not hmac.compare_digest(expected, fields["Signature"]):
            raise Fail(
                403,
                "InvalidSignatureException",
                "The request signature we calculated does not match the signature you provided",
            )

    def authorize(self, headers):
        if not self.credential:
            return
        auth = headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or auth[len("Bearer ") :] not in self.tokens:
            raise Fail(401, "NotAuthorizedException", "a bearer token issued by /v1/oauth/tokens is required")

    def new_table_bucket(self):
        """A fresh bucket on the S3 server, named as S3 Tables names a
        table's (the server takes unsigned requests)."""
        bucket = f"{uuid.uuid4()}--table-s3"
        req = urllib.request.Request(f"{self.s3_endpoint}/{bucket}", method="PUT")
        with urllib.request.urlopen(req, timeout=10) as r:
            if r.status != 200:
                raise Fail(500, "InternalServerError", f"creating bucket {bucket}: HTTP {r.status}")
        return f"s3://{bucket}"

    def dispatch(self, method, parts, query, body):
        sql = self.sql
        n = len(parts)
        if parts == ["namespaces"]:
            if method == "GET":
                parent = namespace_of(query["parent"][0]) if "parent" in query else ()
                return 200, {"namespaces": [list(ns) for ns in sql.list_namespaces(parent)]}
            if method == "POST":
                req = json.loads(body)
                ns = tuple(req["namespace"])
                sql.create_namespace(ns, req.get("properties") or {})
                return 200, {"namespace": list(ns), "properties": sql.load_namespace_properties(ns)}
        if parts == ["tables", "rename"] and method == "POST":
            req = json.loads(body)
            src, dst = req["source"], req["destination"]
            sql.rename_table((*src["namespace"], src["name"]), (*dst["namespace"], dst["name"]))
            return 204, None
        if n >= 2 and parts[0] == "namespaces":
            ns = namespace_of(parts[1])
            if n == 2:
                if method == "GET":
                    return 200, {"namespace": list(ns), "properties": sql.load_namespace_properties(ns)}
                if method == "HEAD":
                    sql.load_namespace_properties(ns)
                    return 204, None
                if method == "DELETE":
                    sql.drop_namespace(ns)
                    return 204, None
            if n == 3 and parts[2] == "properties" and method == "POST":
                req = json.loads(body)
                summary = sql.update_namespace_properties(ns, set(req.get("removals") or []), req.get("updates") or {})
                return 200, {"updated": summary.updated, "removed": summary.removed, "missing": summary.missing}
            if n == 3 and parts[2] == "register" and method == "POST":
                req = RegisterTableRequest.model_validate_json(body)
                return 200, table_result(sql.register_table((*ns, req.name), req.metadata_location))
            if n == 3 and parts[2] == "tables":
                if method == "GET":
                    sql.load_namespace_properties(ns)
                    ids = [{"namespace": list(t[:-1]), "name": t[-1]} for t in sql.list_tables(ns)]
                    return 200, {"identifiers": ids}
                if method == "POST":
                    raw = json.loads(body)
                    raw["partition-spec"] = with_field_ids(raw.get("partition-spec"))
                    raw.setdefault("location", None)
                    raw.setdefault("partition-spec", None)
                    raw.setdefault("write-order", None)
                    req = CreateTableRequest.model_validate(raw)
                    if req.stage_create:
                        raise Fail(400, "BadRequestException", "staged creates are not served here")
                    location = req.location
                    if location is None and self.table_buckets:
                        location = self.new_table_bucket()
                    kwargs = {"location": location, "properties": req.properties}
                    if req.partition_spec is not None:
                        kwargs["partition_spec"] = req.partition_spec
                    if req.write_order is not None:
                        kwargs["sort_order"] = req.write_order
                    table = sql.create_table((*ns, req.name), req.table_schema, **kwargs)
                    return 200, table_result(table)
            if n == 4 and parts[2] == "tables":
                ident = (*ns, urllib.parse.unquote(parts[3]))
                if method == "GET":
                    return 200, table_result(sql.load_table(ident))
                if method == "HEAD":
                    sql.load_table(ident)
                    return 204, None
                if method == "DELETE":
                    sql.drop_table(ident)
                    return 204, None
                if method == "POST":
                    raw = json.loads(body)
                    raw.setdefault("identifier", {"namespace": list(ns), "name": ident[-1]})
                    req = CommitTableRequest.model_validate(raw)
                    table = sql.load_table(ident)
                    response = sql.commit_table(table, req.requirements, req.updates)
                    return 200, {
                        "metadata-location": response.metadata_location,
                        "metadata": json.loads(response.metadata.model_dump_json()),
                    }
        raise Fail(404, "NotFoundException", f"no route {method} /v1/{'/'.join(parts)}")


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A client killed with a keep-alive connection open (a test's
        # SIGKILLed daemon) resets it: an event, not a server failure.
        err = sys.exc_info()[1]
        if isinstance(err, ConnectionError):
            sys.stderr.write(f"rest catalog: client {client_address[0]}:{client_address[1]} went away: {err}\n")
            return
        super().handle_error(request, client_address)


def handler_for(catalog):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            sys.stderr.write("rest catalog: " + (fmt % args) + "\n")

        def answer(self, code, doc):
            data = b"" if doc is None else json.dumps(doc).encode()
            self.send_response(code)
            if doc is not None:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if data and self.command != "HEAD":
                self.wfile.write(data)

        def handle_any(self):
            url = urllib.parse.urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            try:
                catalog.verify_sigv4(self.command, self.path, self.headers, body)
                code, doc = catalog.route(self.command, url.path, urllib.parse.parse_qs(url.query), body, self.headers)
            except Fail as e:
                code, doc = e.code, {"error": {"message": e.message, "type": e.kind, "code": e.code}}
            except Exception as e:  # noqa: BLE001 - every failure is answered, as the spec's ErrorModel
                for kind, status, name in ERRORS:
                    if isinstance(e, kind):
                        code, doc = status, {"error": {"message": str(e), "type": name, "code": status}}
                        break
                else:
                    traceback.print_exc()
                    code = 400 if isinstance(e, ValueError) else 500
                    doc = {"error": {"message": f"{type(e).__name__}: {e}", "type": type(e).__name__, "code": code}}
            self.answer(code, doc)

        do_GET = do_POST = do_HEAD = do_DELETE = handle_any

    return Handler


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", required=True)
    parser.add_argument("--warehouse")
    parser.add_argument("--credential")
    parser.add_argument("--prefix")
    parser.add_argument("--property", action="append", default=[])
    parser.add_argument("--hold-first-rewrite-ms", type=int, default=0)
    parser.add_argument("--warehouse-name")
    parser.add_argument("--sigv4")
    parser.add_argument("--base-path")
    parser.add_argument("--table-buckets", action="store_true")
    args = parser.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    catalog = Catalog(args)
    server = Server(("127.0.0.1", 0), handler_for(catalog))
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"rest catalog listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
