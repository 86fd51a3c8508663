// Interoperability test: a Node.js client of the logstore gRPC API.
//
//   node tests/interop/interop.mjs HOST:PORT [STATUSES.json]
//
// Loads the project's .proto files with @grpc/proto-loader (no generated
// code, no custom decoding of records: the FetchResponse, stored frames
// included, is decoded by protobufjs from the .proto alone), then creates a
// topic, produces structured records (keys, headers, null and empty keys and
// values), fetches them back and checks every field. It also checks error
// statuses, ProduceStream, Subscribe, ListOffsets, MultiProduce and MultiFetch
// (per-partition statuses, order, a long poll), the admin calls and,
// separately, the stored header layout documented in records.proto.
// Error statuses are decoded from their rich details (the
// "grpc-status-details-bin" trailer, a google.rpc.Status) with the .proto
// files alone: each carries a google.rpc.ErrorInfo whose reason and metadata
// are checked; STATUSES.json (written by tests/test_interop_node.py) holds
// one serialized status per error class of the broker, each decoded here.
//
// Prints one line per check ("ok" / "FAIL") and exits 1 on any failure, 2 on
// a usage error. Run by tests/test_interop_node.py against a real broker.

import { strict as assert } from "node:assert";
import { createHash, randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";
import zlib from "node:zlib";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const PROTO_DIR = path.resolve(HERE, "..", "..", "proto");
const CALL_TIMEOUT_MS = 15_000;
const require = createRequire(import.meta.url);
const GRPC_JS_VERSION = require("@grpc/grpc-js/package.json").version;
const PROTO_LOADER_VERSION = require("@grpc/proto-loader/package.json").version;

const address = process.argv[2];
const statusesPath = process.argv[3];
if (!address || process.argv.length > 4) {
  console.error("usage: node tests/interop/interop.mjs HOST:PORT [STATUSES.json]");
  process.exit(2);
}

// ---------------------------------------------------------------- checks --

let failures = 0;
let passes = 0;

function show(v) {
  if (Buffer.isBuffer(v)) {
    if (v.length > 48) return `Buffer<${v.length} bytes, ${v.subarray(0, 16).toString("hex")}...${v.subarray(-8).toString("hex")}>`;
    return `Buffer<${v.toString("hex") || "empty"}>`;
  }
  if (v === undefined) return "undefined (absent)";
  if (v === null) return "null";
  return JSON.stringify(v, (_k, x) =>
    x && x.type === "Buffer" && Array.isArray(x.data) ? `hex:${Buffer.from(x.data).toString("hex")}` : x,
  );
}

function check(name, actual, expected) {
  let ok;
  try {
    assert.deepStrictEqual(actual, expected);
    ok = true;
  } catch {
    ok = false;
  }
  if (ok) {
    passes += 1;
    console.log(`ok    ${name}`);
  } else {
    failures += 1;
    console.log(`FAIL  ${name}: expected ${show(expected)}, got ${show(actual)}`);
  }
  return ok;
}

function checkTrue(name, cond, detail = "") {
  if (cond) {
    passes += 1;
    console.log(`ok    ${name}`);
  } else {
    failures += 1;
    console.log(`FAIL  ${name}${detail ? `: ${detail}` : ""}`);
  }
  return cond;
}

// Runs one section; an unexpected exception fails it and the run goes on.
async function section(title, fn) {
  console.log(`--- ${title}`);
  try {
    await fn();
  } catch (err) {
    failures += 1;
    const what = err && err.code !== undefined ? `gRPC ${codeName(err.code)}: ${err.details}` : err?.stack || err;
    console.log(`FAIL  ${title}: unexpected error: ${what}`);
  }
}

function codeName(code) {
  return Object.keys(grpc.status).find((k) => grpc.status[k] === code) ?? String(code);
}

// ------------------------------------------------------------ the client --

const LOADER_OPTIONS = {
  includeDirs: [PROTO_DIR],
  keepCase: true,
  longs: String,
  enums: String,
  bytes: Buffer,
  defaults: true,
  oneofs: true,
};

const packageDefinition = protoLoader.loadSync(["logstore/v1/logstore.proto"], LOADER_OPTIONS);
const proto = grpc.loadPackageDefinition(packageDefinition);
const LogStore = proto.logstore.v1.LogStore;
// TLS + a bearer token when the test asks for them (a broker with --tls-cert
// and --auth token): the CA file and the token come from the environment so
// the token never shows in a process listing.
function channelCredentials() {
  const caPath = process.env.LOGSTORE_INTEROP_TLS_CA;
  const token = process.env.LOGSTORE_INTEROP_TOKEN;
  if (!caPath) return grpc.credentials.createInsecure();
  const tls = grpc.credentials.createSsl(readFileSync(caPath));
  if (!token) return tls;
  const bearer = grpc.credentials.createFromMetadataGenerator((_params, callback) => {
    const md = new grpc.Metadata();
    md.add("authorization", `Bearer ${token}`);
    callback(null, md);
  });
  return grpc.credentials.combineChannelCredentials(tls, bearer);
}

const client = new LogStore(address, channelCredentials());

function deadline() {
  return new Date(Date.now() + CALL_TIMEOUT_MS);
}

function unary(method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: deadline() }, (err, response) => (err ? reject(err) : resolve(response)));
  });
}

// google.rpc.Status and its details, from proto/google/rpc alone (protobufjs
// is @grpc/proto-loader's own dependency, pinned by package-lock.json).
const protobuf = require("protobufjs");
// lz4 frames (lz4.org frame format) in pure JS: node:zlib has gzip and zstd only.
const lz4js = require("lz4js");
const rpcRoot = new protobuf.Root();
// google/protobuf/{any,duration}.proto are protobufjs's built-in copies.
rpcRoot.resolvePath = (_origin, target) => (target.startsWith("google/protobuf/") ? target : path.join(PROTO_DIR, target));
rpcRoot.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"], { keepCase: true });
const StatusType = rpcRoot.lookupType("google.rpc.Status");
// records.proto's RecordBatch, to build and read the payload of compressed
// batches: the serialized `records` field, i.e. a RecordBatch with only records.
const recRoot = new protobuf.Root();
recRoot.resolvePath = (_origin, target) => path.join(PROTO_DIR, target);
recRoot.loadSync(["logstore/v1/records.proto"], { keepCase: true });
const RecordBatchType = recRoot.lookupType("logstore.v1.RecordBatch");
const ErrorInfoType = rpcRoot.lookupType("google.rpc.ErrorInfo");
const RetryInfoType = rpcRoot.lookupType("google.rpc.RetryInfo");
const TO_OBJECT = { longs: String, defaults: true };

// {code, message, errorInfo: {reason, domain, metadata} | null, retryDelayMs | null}
function decodeStatus(bytes) {
  const status = StatusType.toObject(StatusType.decode(bytes), TO_OBJECT);
  let errorInfo = null;
  let retryDelayMs = null;
  for (const any of status.details) {
    if (any.type_url === "type.googleapis.com/google.rpc.ErrorInfo") {
      errorInfo = ErrorInfoType.toObject(ErrorInfoType.decode(any.value), TO_OBJECT);
    } else if (any.type_url === "type.googleapis.com/google.rpc.RetryInfo") {
      const d = RetryInfoType.toObject(RetryInfoType.decode(any.value), TO_OBJECT).retry_delay;
      retryDelayMs = Number(d?.seconds ?? 0) * 1000 + Math.floor((d?.nanos ?? 0) / 1e6);
    }
  }
  return { code: status.code, message: status.message, errorInfo, retryDelayMs };
}

// The rich status of a failed call (null when the broker sent none).
function richStatus(err) {
  const bin = err.metadata?.get("grpc-status-details-bin")?.[0];
  return bin ? decodeStatus(Buffer.from(bin)) : null;
}

// Expects a unary call to fail with `code` (and ErrorInfo `reason`, and
// metadata containing `metadata`, when given); returns the error.
async function expectStatus(name, method, request, code, reason = undefined, metadata = undefined) {
  try {
    const response = await unary(method, request);
    checkTrue(name, false, `expected ${codeName(code)}, got success ${show(response)}`);
    return null;
  } catch (err) {
    if (err.code === undefined) throw err;
    checkError(name, err, code, reason, metadata);
    return err;
  }
}

function checkError(name, err, code, reason, metadata) {
  check(`${name} (message: ${JSON.stringify(err.details)})`, codeName(err.code), codeName(code));
  checkTrue(`${name}: the message is not empty`, typeof err.details === "string" && err.details.length > 0);
  if (reason === undefined) return;
  const rich = richStatus(err);
  check(`${name}: ErrorInfo reason and domain`, [rich?.errorInfo?.reason, rich?.errorInfo?.domain], [reason, "logstore.v1"]);
  check(`${name}: rich status code and message match the call's`, [rich?.code, rich?.message], [err.code, err.details]);
  for (const [k, v] of Object.entries(metadata ?? {})) {
    check(`${name}: ErrorInfo metadata ${k}`, rich?.errorInfo?.metadata?.[k], v);
  }
}

// A unary call with request bytes as given (no serializer): malformed input.
function rawUnary(method, bytes) {
  return new Promise((resolve, reject) => {
    client.makeUnaryRequest(`/logstore.v1.LogStore/${method}`, (x) => x, (x) => x, bytes, { deadline: deadline() }, (err, r) => (err ? reject(err) : resolve(r)));
  });
}

// ------------------------------------------------- records and decoding --

// Flattens batches into records with offsets, skipping offsets < `from`, as
// a consumer does (DESIGN.md: the first batch may start before the offset).
// The only logic here is offset arithmetic: every field comes from protobufjs.
// records.proto: with attributes bit 3 (0x08) set a record's offset is
// base_offset + its offset_delta (offsets may have gaps), else base + index.
const ATTR_OFFSET_DELTAS = 0x08;
function recordsOf(batches, from = 0n) {
  const out = [];
  for (const batch of batches) {
    const base = BigInt(batch.base_offset);
    const deltas = (batch.attributes & ATTR_OFFSET_DELTAS) !== 0;
    batch.records.forEach((record, i) => {
      const offset = base + BigInt(deltas ? record.offset_delta || 0 : i);
      if (offset >= from) out.push({ offset: String(offset), record, batch });
    });
  }
  return out;
}

// What a record read back must look like. `key`/`value` undefined = null.
// Absent optional fields decode as undefined (not as an empty Buffer) because
// proto3 `optional` fields belong to a synthetic oneof, which `defaults: true`
// does not fill.
function expectRecord(name, got, want) {
  const r = got.record;
  check(`${name}: key`, r.key, want.key);
  check(`${name}: value`, r.value, want.value);
  check(`${name}: key presence (oneof _key)`, r._key, want.key === undefined ? undefined : "key");
  check(`${name}: value presence (oneof _value)`, r._value, want.value === undefined ? undefined : "value");
  check(`${name}: timestamp_ms`, r.timestamp_ms, String(want.timestamp_ms ?? 0));
  check(
    `${name}: headers`,
    r.headers.map((h) => [h.key, h.value]),
    (want.headers ?? []).map((h) => [h.key, h.value]),
  );
}

// CRC32C (Castagnoli), to check the documented stored header layout only.
const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

function crc32c(buf) {
  let c = 0xffffffff;
  for (const b of buf) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

// ------------------------------------------------------------------ data --

const topic = `interop-node-${randomBytes(4).toString("hex")}`;
const PARTITIONS = 4;
const bin = Buffer.from([0x00, 0xff, 0x7f, 0x80, 0x0a, 0x00]);
const big = randomBytes(70_000);
// Producer timestamps for batch B: an hour ahead of now, so that they are
// later than batch A's append time and a lookup by time finds batch B.
const T0 = Date.now() + 3_600_000;

// Batch A: partition 0, producer sets no timestamps.
const batchA = [
  { key: Buffer.from("user-1"), value: Buffer.from(JSON.stringify({ id: 1, name: "Ada" })), headers: [{ key: "content-type", value: Buffer.from("application/json") }] },
  { key: undefined, value: Buffer.from("null key"), headers: [] },
  { key: Buffer.from("user-1"), value: undefined, headers: [{ key: "reason", value: Buffer.from("tombstone") }] },
  { key: Buffer.alloc(0), value: Buffer.alloc(0), headers: [{ key: "empty", value: Buffer.alloc(0) }] },
  {
    key: bin,
    value: big,
    headers: [
      { key: "dup", value: Buffer.from("1") },
      { key: "dup", value: Buffer.from("2") },
      { key: "ключ-ü-😀", value: bin },
    ],
  },
  { key: undefined, value: undefined, headers: [] },
];
// Batch B: partition 0, producer timestamps (one record left at 0).
const batchB = [
  { key: Buffer.from("k-b0"), value: Buffer.from("b0"), timestamp_ms: T0, headers: [] },
  { key: Buffer.from("k-b1"), value: Buffer.from("b1"), timestamp_ms: 0, headers: [{ key: "h", value: Buffer.from("v") }] },
  { key: Buffer.from("k-b2"), value: Buffer.from("b2"), timestamp_ms: T0 + 5, headers: [] },
];

// A record as sent: null fields are omitted (they could also be null).
function toWire(r) {
  const out = { headers: r.headers };
  if (r.key !== undefined) out.key = r.key;
  if (r.value !== undefined) out.value = r.value;
  if (r.timestamp_ms) out.timestamp_ms = String(r.timestamp_ms);
  return out;
}

// ------------------------------------------------------------------ main --

async function main() {
  console.log(`node ${process.version}, @grpc/grpc-js ${GRPC_JS_VERSION}, @grpc/proto-loader ${PROTO_LOADER_VERSION}; broker ${address}; topic ${topic}`);
  await new Promise((resolve, reject) =>
    client.waitForReady(deadline(), (err) => (err ? reject(new Error(`cannot connect to ${address}: ${err.message}`)) : resolve())),
  );

  await section("CreateTopic", async () => {
    const res = await unary("CreateTopic", { name: topic, partitions: PARTITIONS, config: { retention_ms: "-1" } });
    check("CreateTopic: name", res.topic.name, topic);
    check("CreateTopic: partitions", res.topic.partitions, PARTITIONS);
    check("CreateTopic: config echoes retention_ms", res.topic.config.retention_ms, "-1");
    checkTrue("CreateTopic: config lists every key (segment_bytes present)", "segment_bytes" in res.topic.config, show(res.topic.config));
  });

  let beforeA = 0;
  let afterA = 0;
  await section("Produce (acks unset = ALL)", async () => {
    beforeA = Date.now();
    const a = await unary("Produce", { topic, partition: 0, request_id: "7", records: batchA.map(toWire) });
    afterA = Date.now();
    check("Produce A: base_offset", a.base_offset, "0");
    check("Produce A: partition (explicit optional 0 is sent)", a.partition, 0);
    check("Produce A: request_id echoed (uint64 as string)", a.request_id, "7");
    check("Produce A: not a duplicate", a.duplicate, false);
    const b = await unary("Produce", {
      topic,
      partition: 0,
      base_timestamp_ms: String(T0),
      max_timestamp_ms: String(T0 + 5),
      records: batchB.map(toWire),
    });
    check("Produce B: base_offset follows A", b.base_offset, String(batchA.length));
    check("Produce B: timestamp_ms is the producer's batch timestamp", b.timestamp_ms, String(T0));
    const c = await unary("Produce", { topic, partition_key: Buffer.from("foobar"), records: [{ value: Buffer.from("keyed") }] });
    check('Produce C: partition_key "foobar" -> partition 2 of 4 (murmur2, as documented)', c.partition, 2);
    check("Produce C: base_offset", c.base_offset, "0");
  });

  const total = batchA.length + batchB.length;
  let fetched = null;
  await section("Fetch and decode with proto-loader", async () => {
    fetched = await unary("Fetch", { topic, partition: 0, offset: "0" });
    check("Fetch: high_watermark", fetched.high_watermark, String(total));
    check("Fetch: log_start_offset", fetched.log_start_offset, "0");
    check("Fetch: number of batches", fetched.batches.length, 2);
    const [ba, bb] = fetched.batches;
    check("batch A: base_offset", ba.base_offset, "0");
    check("batch A: record_count", ba.record_count, batchA.length);
    check("batch A: records decoded", ba.records.length, batchA.length);
    checkTrue("batch A: crc32c present (a non-zero uint32 number)", typeof ba.crc32c === "number" && ba.crc32c > 0, show(ba.crc32c));
    checkTrue("batch A: batch_length present", typeof ba.batch_length === "number" && ba.batch_length > big.length, show(ba.batch_length));
    check("batch A: attributes (codec none)", ba.attributes, 0);
    check("batch A: producer_id (none)", ba.producer_id, "0");
    const tsA = Number(ba.base_timestamp_ms);
    checkTrue(
      "batch A: base_timestamp_ms is the append time",
      tsA >= beforeA - 5000 && tsA <= afterA + 5000,
      `${ba.base_timestamp_ms} not in [${beforeA}, ${afterA}] (±5 s)`,
    );
    check("batch B: base_offset", bb.base_offset, String(batchA.length));
    check("batch B: record_count", bb.record_count, batchB.length);
    check("batch B: base_timestamp_ms", bb.base_timestamp_ms, String(T0));
    check("batch B: max_timestamp_ms", bb.max_timestamp_ms, String(T0 + 5));
    checkTrue("batch B: crc32c differs from batch A's", bb.crc32c !== ba.crc32c);

    const recs = recordsOf(fetched.batches);
    check("offsets are contiguous from 0", recs.map((r) => r.offset), [...Array(total).keys()].map(String));
    const want = [...batchA, ...batchB];
    want.forEach((w, i) => expectRecord(`record ${i}`, recs[i], w));
    // A record stored with timestamp 0 takes its batch's timestamp (readers do this).
    const r6 = recs[batchA.length + 1];
    check("record 7: timestamp 0 -> reader uses batch base_timestamp_ms", r6.record.timestamp_ms === "0" ? r6.batch.base_timestamp_ms : r6.record.timestamp_ms, String(T0));
    check("record 1: null key is not an empty key", [recs[1].record.key, recs[3].record.key], [undefined, Buffer.alloc(0)]);
    check("record 2: null value (tombstone) is not an empty value", [recs[2].record.value, recs[3].record.value], [undefined, Buffer.alloc(0)]);
    check("record 4: header name with non-ASCII UTF-8", recs[4].record.headers[2].key, "ключ-ü-😀");
  });

  await section("Fetch from an offset inside a batch", async () => {
    const from = BigInt(batchA.length + 1);
    const res = await unary("Fetch", { topic, partition: 0, offset: String(from), max_bytes: 1 });
    check("Fetch(7, max_bytes=1): one whole batch even when larger than max_bytes", res.batches.length, 1);
    check("Fetch(7): the batch containing offset 7 starts at 6", res.batches[0]?.base_offset, String(batchA.length));
    const recs = recordsOf(res.batches, from);
    check("Fetch(7): records after skipping those below 7", recs.map((r) => r.record.value.toString()), ["b1", "b2"]);
    const atEnd = await unary("Fetch", { topic, partition: 0, offset: String(total) });
    check("Fetch at the log end offset: valid and empty", atEnd.batches.length, 0);
    check("Fetch at the log end offset: high_watermark", atEnd.high_watermark, String(total));
  });

  await section("Stored header layout as documented in records.proto (raw bytes)", async () => {
    // Same Fetch, but keep the response bytes: this section checks the
    // documented byte layout, which a reader in any language may rely on.
    const def = packageDefinition["logstore.v1.LogStore"].Fetch;
    const raw = await new Promise((resolve, reject) =>
      client.makeUnaryRequest(def.path, def.requestSerialize, (b) => b, { topic, partition: 0, offset: "0" }, { deadline: deadline() }, (err, res) =>
        err ? reject(err) : resolve(res),
      ),
    );
    const decoded = def.responseDeserialize(raw);
    const digest = (v) => createHash("sha256").update(show(v)).digest("hex");
    check("raw: decodes to the same FetchResponse (sha256 of its JSON)", digest(decoded), digest(fetched));
    let pos = 0;
    let i = 0;
    while (pos < raw.length && raw[pos] === 0x0a) {
      // tag 0x0a, 5-byte varint length (DESIGN.md: frames use overlong varints)
      let len = 0;
      let n = 0;
      for (; n < 10; n++) {
        const b = raw[pos + 1 + n];
        len += (b & 0x7f) * 2 ** (7 * n);
        if (!(b & 0x80)) break;
      }
      check(`raw batch ${i}: length varint is 5 bytes`, n + 1, 5);
      const start = pos + 1 + n + 1;
      const batch = raw.subarray(start, start + len);
      const tags = [0, 9, 14, 19, 24, 33, 42, 51, 56, 61].map((o) => batch[o]);
      check(`raw batch ${i}: header tags at documented offsets`, tags, [0x09, 0x15, 0x1d, 0x25, 0x29, 0x31, 0x39, 0x45, 0x4d, 0x55]);
      check(`raw batch ${i}: base_offset at byte 1`, String(batch.readBigInt64LE(1)), decoded.batches[i].base_offset);
      check(`raw batch ${i}: batch_length at byte 15 = serialized length`, batch.readUInt32LE(15), len);
      check(`raw batch ${i}: record_count at byte 20`, batch.readUInt32LE(20), decoded.batches[i].record_count);
      check(`raw batch ${i}: crc32c at byte 10 = CRC32C(bytes 14..end)`, batch.readUInt32LE(10), crc32c(batch.subarray(14)));
      check(`raw batch ${i}: records start at byte 66 (tag 0x7a)`, batch[66], 0x7a);
      pos = start + len;
      i += 1;
    }
    check("raw: batches are the first fields, then the other fields", i, decoded.batches.length);
  });

  await section("ListOffsets", async () => {
    const latest = await unary("ListOffsets", { topic, partitions: [0], position: "OFFSET_SPEC_LATEST" });
    check("ListOffsets latest", latest.offsets.map((o) => [o.partition, o.offset]), [[0, String(total)]]);
    const earliest = await unary("ListOffsets", { topic, partitions: [0], position: "OFFSET_SPEC_EARLIEST" });
    check("ListOffsets earliest", earliest.offsets.map((o) => [o.partition, o.offset]), [[0, "0"]]);
    const all = await unary("ListOffsets", { topic, position: "OFFSET_SPEC_LATEST" });
    check(
      "ListOffsets latest, all partitions",
      all.offsets.map((o) => [o.partition, o.offset]).sort((x, y) => x[0] - y[0]),
      [
        [0, String(total)],
        [1, "0"],
        [2, "1"],
        [3, "0"],
      ],
    );
    const byTime = await unary("ListOffsets", { topic, partitions: [0], timestamp_ms: String(T0) });
    check("ListOffsets by timestamp T0: offset of batch B, found", byTime.offsets.map((o) => [o.offset, o.found]), [[String(batchA.length), true]]);
    const beforeAll = await unary("ListOffsets", { topic, partitions: [0], timestamp_ms: String(beforeA - 60_000) });
    check("ListOffsets by a timestamp before batch A: offset 0, found", beforeAll.offsets.map((o) => [o.offset, o.found]), [["0", true]]);
    const past = await unary("ListOffsets", { topic, partitions: [0], timestamp_ms: String(T0 + 86_400_000) });
    check("ListOffsets past the last record: end offset, found = false", past.offsets.map((o) => [o.offset, o.found]), [[String(total), false]]);
  });

  await section("Subscribe", async () => {
    const call = client.Subscribe({ topic, partition: 0, offset: "0" }, { deadline: deadline() });
    const seen = [];
    let tailed = null;
    const done = new Promise((resolve, reject) => {
      call.on("data", (msg) => {
        for (const r of recordsOf(msg.batches, 0n)) seen.push(r);
        if (seen.length === total && tailed === null) {
          // Everything stored has arrived: now append and expect it pushed.
          tailed = unary("Produce", { topic, partition: 0, records: [{ key: Buffer.from("tail"), value: Buffer.from("pushed") }] });
          tailed.catch(reject);
        }
        if (seen.length >= total + 1) {
          call.cancel();
          resolve();
        }
      });
      call.on("error", (err) => (err.code === grpc.status.CANCELLED ? resolve() : reject(err)));
      call.on("end", resolve);
    });
    await done;
    check("Subscribe from 0: stored records in order", seen.slice(0, total).map((r) => r.offset), [...Array(total).keys()].map(String));
    check("Subscribe: stored values match", seen.slice(0, total).map((r) => show(r.record.value)), [...batchA, ...batchB].map((w) => show(w.value)));
    const t = await tailed;
    check("Subscribe: produce while subscribed", t?.base_offset, String(total));
    check("Subscribe: the appended record is pushed", seen.slice(total).map((r) => [r.offset, show(r.record.key), show(r.record.value)]), [
      [String(total), show(Buffer.from("tail")), show(Buffer.from("pushed"))],
    ]);
  });

  await section("ProduceStream", async () => {
    const call = client.ProduceStream({ deadline: deadline() });
    const replies = [];
    const done = new Promise((resolve, reject) => {
      call.on("data", (r) => replies.push(r));
      call.on("error", reject);
      call.on("end", resolve);
    });
    call.write({ topic, partition: 1, request_id: "18446744073709551615", records: [{ value: Buffer.from("s0") }] });
    call.write({ topic, partition: 1, request_id: "2", records: [] });
    call.write({ topic, partition: 1, request_id: "3", records: [{ value: Buffer.from("s1") }, { value: Buffer.from("s2") }] });
    call.end();
    await done;
    check("ProduceStream: one reply per request, in order (request_id, max uint64 kept)", replies.map((r) => r.request_id), ["18446744073709551615", "2", "3"]);
    check("ProduceStream: status codes (OK, INVALID_ARGUMENT for the empty batch, OK)", replies.map((r) => codeName(r.status?.code ?? 0)), ["OK", "INVALID_ARGUMENT", "OK"]);
    checkTrue("ProduceStream: the bad batch's status has a message", !!replies[1]?.status?.message, show(replies[1]?.status));
    check("ProduceStream: offsets", [replies[0]?.base_offset, replies[2]?.base_offset], ["0", "1"]);
  });

  await section("Idempotent producer", async () => {
    const ip = await unary("InitProducer", {});
    checkTrue("InitProducer: producer_id >= 1", BigInt(ip.producer_id) >= 1n, show(ip));
    const req = { topic, partition: 3, producer_id: ip.producer_id, producer_epoch: ip.producer_epoch, base_sequence: 0, records: [{ value: Buffer.from("once") }] };
    const first = await unary("Produce", req);
    const again = await unary("Produce", req);
    check("retry of the same batch: same offset, duplicate = true", [again.base_offset, again.duplicate], [first.base_offset, true]);
    const res = await unary("Fetch", { topic, partition: 3, offset: "0" });
    check("retry stored once", recordsOf(res.batches).length, 1);
    check("batch header carries producer_id and epoch", [res.batches[0]?.producer_id, res.batches[0]?.producer_epoch], [ip.producer_id, ip.producer_epoch]);
  });

  await section("Admin", async () => {
    const list = await unary("ListTopics", {});
    checkTrue("ListTopics includes the topic", list.topics.some((t) => t.name === topic), show(list.topics.map((t) => t.name)));
    const d = await unary("DescribeTopic", { name: topic });
    check("DescribeTopic: partitions", d.partitions.length, PARTITIONS);
    const p0 = d.partitions.find((p) => p.partition === 0);
    check("DescribeTopic: partition 0 offsets", [p0?.log_start_offset, p0?.log_end_offset], ["0", String(total + 1)]);
    checkTrue("DescribeTopic: size_bytes > 0", BigInt(p0?.size_bytes ?? 0) > 0n, show(p0));
  });

  await section("Error statuses", async () => {
    await expectStatus("Fetch of an unknown topic -> NOT_FOUND", "Fetch", { topic: `${topic}-missing`, partition: 0, offset: "0" }, grpc.status.NOT_FOUND, "UNKNOWN_TOPIC");
    await expectStatus("Fetch of an unknown partition -> NOT_FOUND", "Fetch", { topic, partition: PARTITIONS, offset: "0" }, grpc.status.NOT_FOUND, "UNKNOWN_PARTITION");
    await expectStatus("Produce of an empty batch -> INVALID_ARGUMENT", "Produce", { topic, partition: 0, records: [] }, grpc.status.INVALID_ARGUMENT, "INVALID_BATCH");
    // protobufjs writes a lone surrogate as the bytes ED A0 80: not UTF-8, so
    // not a valid proto3 string. Stored, it would be a batch other readers
    // (upb, Go, Java) cannot parse; the broker must refuse it.
    await expectStatus(
      "Produce with a header name that is not UTF-8 -> INVALID_ARGUMENT",
      "Produce",
      { topic, partition: 0, records: [{ value: Buffer.from("x"), headers: [{ key: "bad-\ud800", value: Buffer.from("v") }] }] },
      grpc.status.INVALID_ARGUMENT,
    );
    await expectStatus("Fetch above the log end offset -> OUT_OF_RANGE", "Fetch", { topic, partition: 0, offset: "1000000" }, grpc.status.OUT_OF_RANGE, "OFFSET_OUT_OF_RANGE", {
      log_start_offset: "0",
      log_end_offset: String(total + 1),
    });
    await expectStatus("CreateTopic of an existing topic -> ALREADY_EXISTS", "CreateTopic", { name: topic, partitions: 1 }, grpc.status.ALREADY_EXISTS, "TOPIC_ALREADY_EXISTS");
    await expectStatus("CreateTopic with a bad name -> INVALID_ARGUMENT", "CreateTopic", { name: "no/slash", partitions: 1 }, grpc.status.INVALID_ARGUMENT, "INVALID_TOPIC_NAME");
    await expectStatus("CreateTopic with a bad config value -> INVALID_ARGUMENT", "CreateTopic", { name: `${topic}-cfg`, partitions: 1, config: { retention_ms: "soon" } }, grpc.status.INVALID_ARGUMENT, "INVALID_CONFIG");
    await expectStatus("Produce with acks = 99 -> INVALID_ARGUMENT", "Produce", { topic, partition: 0, acks: 99, records: [{ value: Buffer.from("x") }] }, grpc.status.INVALID_ARGUMENT, "INVALID_ARGUMENT");
    for (const method of ["Fetch", "ListOffsets", "CreateTopic"]) {
      try {
        await rawUnary(method, Buffer.from([0x0a, 0x05, 0x61, 0x62]));
        checkTrue(`${method} of truncated bytes -> INVALID_ARGUMENT`, false, "succeeded");
      } catch (err) {
        if (err.code === undefined) throw err;
        checkError(`${method} of truncated bytes -> INVALID_ARGUMENT`, err, grpc.status.INVALID_ARGUMENT, "INVALID_REQUEST");
      }
    }
    const ip = await unary("InitProducer", {});
    const idem = (producer_id, producer_epoch, base_sequence) => ({ topic, partition: 1, producer_id, producer_epoch, base_sequence, records: [{ value: Buffer.from("i") }] });
    await unary("Produce", idem(ip.producer_id, 1, 0));
    await expectStatus("Produce with an older epoch -> FAILED_PRECONDITION (fenced)", "Produce", idem(ip.producer_id, 0, 1), grpc.status.FAILED_PRECONDITION, "INVALID_PRODUCER_EPOCH");
    await expectStatus("Produce with a sequence gap -> FAILED_PRECONDITION", "Produce", idem(ip.producer_id, 1, 7), grpc.status.FAILED_PRECONDITION, "OUT_OF_ORDER_SEQUENCE_NUMBER");
    await expectStatus("Produce with a never-issued producer id -> FAILED_PRECONDITION", "Produce", idem(String(BigInt(ip.producer_id) + 1000000n), 0, 0), grpc.status.FAILED_PRECONDITION, "UNKNOWN_PRODUCER_ID");
    const after = await unary("Fetch", { topic, partition: 0, offset: "0" });
    check("errors changed nothing stored", after.high_watermark, String(total + 1));
    check("Fetch: log_end_offset and high_watermark are two fields, equal on one broker", after.log_end_offset, after.high_watermark);
  });

  if (statusesPath) {
    await section("Every error class's status decodes (ErrorInfo, RetryInfo)", async () => {
      const cases = JSON.parse(readFileSync(statusesPath, "utf8"));
      checkTrue("statuses file lists error classes", cases.length > 10, `${cases.length} cases`);
      for (const c of cases) {
        const got = decodeStatus(Buffer.from(c.status_bin_base64, "base64"));
        check(`${c.reason}: code, message, reason, domain, metadata, retry delay`, [got.code, got.message, got.errorInfo?.reason, got.errorInfo?.domain, got.errorInfo?.metadata, got.retryDelayMs], [
          c.code,
          c.message,
          c.reason,
          "logstore.v1",
          c.metadata,
          c.retry_after_ms,
        ]);
      }
    });
  }

  await section("Compressed batches: gzip and zstd (node:zlib), lz4 (lz4js), written by Node and by Python", async () => {
    // records.proto, "Compressed batches": attributes bits 0-2 = the codec;
    // compressed_records = the codec's compression of the serialized records
    // field; decompress and parse as a RecordBatch to get the records.
    const ztopic = `${topic}-z`;
    await unary("CreateTopic", { name: ztopic, partitions: 1, config: { retention_ms: "-1" } });
    const codecs = [
      ["gzip", "CODEC_GZIP", 1, (b) => zlib.gzipSync(b), (b) => zlib.gunzipSync(b)],
      ["zstd", "CODEC_ZSTD", 4, (b) => zlib.zstdCompressSync(b), (b) => zlib.zstdDecompressSync(b)],
      ["lz4", "CODEC_LZ4", 3, (b) => Buffer.from(lz4js.compress(b)), (b) => Buffer.from(lz4js.decompress(b))],
    ];
    const plain = Buffer.from(RecordBatchType.encode(RecordBatchType.fromObject({ records: batchA.map(toWire) })).finish());
    let next = 0;
    for (const [name, enumName, , compress] of codecs) {
      // batchA holds 70 KB of random bytes, so the payload does not shrink:
      // the broker stores what it was sent either way.
      const payload = compress(plain);
      const res = await unary("Produce", { topic: ztopic, partition: 0, compression: enumName, compressed_records: payload });
      check(`Produce ${name}: base_offset`, res.base_offset, String(next));
      next += batchA.length;
    }
    const decodeOpts = { longs: String, bytes: Buffer, defaults: true, oneofs: true };
    const readCompressed = (batch, name, codec, decompress) => {
      check(`${name} batch: attributes bits 0-2 = ${codec}`, batch.attributes & 0x07, codec);
      check(`${name} batch: no plain records`, batch.records.length, 0);
      const inner = RecordBatchType.toObject(RecordBatchType.decode(decompress(batch.compressed_records)), decodeOpts);
      check(`${name} batch: record_count matches the decompressed records`, inner.records.length, batch.record_count);
      return inner.records.map((record, i) => ({ offset: String(BigInt(batch.base_offset) + BigInt(i)), record }));
    };
    const f = await unary("Fetch", { topic: ztopic, partition: 0, offset: "0", max_bytes: 64 << 20 });
    check("Fetch: one stored batch per produce, compressed as sent", f.batches.length, codecs.length);
    codecs.forEach(([name, , codec, , decompress], i) => {
      const got = readCompressed(f.batches[i], name, codec, decompress);
      got.forEach((g, j) => expectRecord(`${name} record ${j}`, g, batchA[j]));
      check(`${name}: offsets`, got.map((g) => g.offset), batchA.map((_, j) => String(i * batchA.length + j)));
    });
    await expectStatus(
      "Produce of a zstd payload that is not zstd -> INVALID_ARGUMENT",
      "Produce",
      { topic: ztopic, partition: 0, compression: "CODEC_ZSTD", compressed_records: Buffer.from("not a zstd frame") },
      grpc.status.INVALID_ARGUMENT,
      "INVALID_BATCH",
    );
    await expectStatus(
      "Produce with snappy -> INVALID_ARGUMENT",
      "Produce",
      { topic: ztopic, partition: 0, compression: "CODEC_SNAPPY", compressed_records: zlib.gzipSync(plain) },
      grpc.status.INVALID_ARGUMENT,
      "INVALID_BATCH",
    );
    const pyTopic = process.env.LOGSTORE_INTEROP_PY_COMPRESSED_TOPIC;
    if (pyTopic) {
      // Written by Python's Producer(compression=...): gzip, zstd, then lz4 batches of
      // values "py-<i>" (tests/test_interop_node.py).
      const pf = await unary("Fetch", { topic: pyTopic, partition: 0, offset: "0", max_bytes: 64 << 20 });
      const byCodec = { 1: codecs[0], 4: codecs[1], 3: codecs[2] };
      const values = [];
      for (const b of pf.batches) {
        const c = byCodec[b.attributes & 0x07];
        checkTrue("Python batch: codec gzip, zstd or lz4", c !== undefined, `attributes ${b.attributes}`);
        if (c) values.push(...readCompressed(b, `python ${c[0]}`, c[2], c[4]).map((g) => g.record.value.toString()));
      }
      check("Python-written compressed records read by Node", values, Array.from({ length: values.length }, (_, i) => `py-${i}`));
      checkTrue("Python-written: all three codecs seen", new Set(pf.batches.map((b) => b.attributes & 7)).size === 3, show(pf.batches.map((b) => b.attributes)));
    }
  });

  await section("MultiProduce and MultiFetch (many partitions per request)", async () => {
    const mt = `${topic}-multi`;
    await unary("CreateTopic", { name: mt, partitions: 3 });
    const rec = (v) => ({ value: Buffer.from(v), headers: [] });
    const reasonOf = (status) => {
      const any = (status?.details ?? []).find((d) => d.type_url === "type.googleapis.com/google.rpc.ErrorInfo");
      return any ? ErrorInfoType.decode(any.value).reason : undefined;
    };
    const mp = await unary("MultiProduce", {
      acks: "ACKS_ALL",
      request_id: "41",
      batches: [
        { topic: mt, partition: 0, request_id: "1", records: [rec("m0a"), rec("m0b")] },
        { topic: "interop-no-such-topic", partition: 0, request_id: "2", records: [rec("x")] },
        { topic: mt, partition: 1, request_id: "3", records: [rec("m1")] },
        { topic: mt, partition: 0, request_id: "4", records: [rec("m0c")] },
        { topic: mt, partition: 99, request_id: "5", records: [rec("x")] },
        { topic: mt, partition: 2, acks: "ACKS_LEADER", records: [rec("x")] },
      ],
    });
    check("MultiProduce: request_id echoed", mp.request_id, "41");
    check("MultiProduce: one result per batch, in order", mp.results.map((r) => r.request_id), ["1", "2", "3", "4", "5", "0"]);
    check(
      "MultiProduce: each batch's own status code",
      mp.results.map((r) => r.status.code),
      [0, grpc.status.NOT_FOUND, 0, 0, grpc.status.NOT_FOUND, grpc.status.INVALID_ARGUMENT],
    );
    check(
      "MultiProduce: each failed batch's ErrorInfo reason",
      mp.results.map((r) => reasonOf(r.status)),
      [undefined, "UNKNOWN_TOPIC", undefined, undefined, "UNKNOWN_PARTITION", "INVALID_ARGUMENT"],
    );
    check("MultiProduce: offsets (order within partition 0 kept; -1 when failed)", mp.results.map((r) => r.base_offset), ["0", "-1", "0", "2", "-1", "-1"]);
    await expectStatus("MultiProduce with no batches -> INVALID_ARGUMENT", "MultiProduce", { batches: [] }, grpc.status.INVALID_ARGUMENT, "INVALID_ARGUMENT");
    try {
      await rawUnary("MultiProduce", Buffer.from([0x7a, 0x05, 0x61, 0x62]));
      checkTrue("MultiProduce malformed bytes -> INVALID_ARGUMENT", false, "succeeded");
    } catch (err) {
      if (err.code === undefined) throw err;
      checkError("MultiProduce malformed bytes -> INVALID_ARGUMENT", err, grpc.status.INVALID_ARGUMENT, "INVALID_REQUEST");
    }

    const mf = await unary("MultiFetch", {
      partitions: [
        { topic: mt, partition: 0, offset: "0" },
        { topic: mt, partition: 1, offset: "0" },
        { topic: mt, partition: 2, offset: "0" },
        { topic: "interop-no-such-topic", partition: 0, offset: "0" },
        { topic: mt, partition: 1, offset: "50" },
      ],
    });
    check("MultiFetch: one entry per partition asked, in order", mf.partitions.map((d) => [d.topic, d.partition]), [[mt, 0], [mt, 1], [mt, 2], ["interop-no-such-topic", 0], [mt, 1]]);
    check("MultiFetch: statuses", mf.partitions.map((d) => d.status?.code ?? 0), [0, 0, 0, grpc.status.NOT_FOUND, grpc.status.OUT_OF_RANGE]);
    check("MultiFetch: reasons", mf.partitions.map((d) => reasonOf(d.status)), [undefined, undefined, undefined, "UNKNOWN_TOPIC", "OFFSET_OUT_OF_RANGE"]);
    check("MultiFetch: partition 0 in order (stored frames decoded by protobufjs)", recordsOf(mf.partitions[0].batches).map((g) => [g.offset, g.record.value.toString()]), [["0", "m0a"], ["1", "m0b"], ["2", "m0c"]]);
    check("MultiFetch: partition 1", recordsOf(mf.partitions[1].batches).map((g) => g.record.value.toString()), ["m1"]);
    check("MultiFetch: high watermarks", mf.partitions.slice(0, 3).map((d) => d.high_watermark), ["3", "1", "0"]);
    check("MultiFetch: log end offsets", mf.partitions.slice(0, 3).map((d) => d.log_end_offset), ["3", "1", "0"]);

    // Long poll over all three partitions: woken by an append to partition 2.
    const t0 = Date.now();
    const polled = unary("MultiFetch", {
      partitions: [0, 1, 2].map((p) => ({ topic: mt, partition: p, offset: p === 0 ? "3" : p === 1 ? "1" : "0" })),
      min_bytes: 1,
      max_wait_ms: 12_000,
    });
    await new Promise((r) => setTimeout(r, 300));
    await unary("Produce", { topic: mt, partition: 2, records: [rec("wake")] });
    const woke = await polled;
    checkTrue("MultiFetch long poll returned before max_wait_ms", Date.now() - t0 < 10_000, `${Date.now() - t0} ms`);
    check("MultiFetch long poll: the appended record, in partition 2 only", woke.partitions.map((d) => recordsOf(d.batches).map((g) => g.record.value.toString())), [[], [], ["wake"]]);
    await expectStatus("MultiFetch with no partitions -> INVALID_ARGUMENT", "MultiFetch", { partitions: [] }, grpc.status.INVALID_ARGUMENT, "INVALID_ARGUMENT");
    await unary("DeleteTopic", { name: mt });
  });

  await section("DeleteTopic", async () => {
    await unary("DeleteTopic", { name: topic });
    await expectStatus("Fetch after DeleteTopic -> NOT_FOUND", "Fetch", { topic, partition: 0, offset: "0" }, grpc.status.NOT_FOUND);
  });
}

const watchdog = setTimeout(() => {
  console.log("FAIL  interop: overall timeout (60 s)");
  process.exit(1);
}, 60_000);

try {
  await main();
} catch (err) {
  failures += 1;
  console.log(`FAIL  interop: ${err?.stack || err}`);
} finally {
  clearTimeout(watchdog);
  client.close();
}
console.log(`${failures === 0 ? "PASS" : "FAIL"}: ${passes} checks passed, ${failures} failed`);
process.exit(failures === 0 ? 0 : 1);
