// Interoperability test: a consumer-group member written in Node.js.
//
//   node tests/interop/group_member.mjs HOST:PORT GROUP TOPIC
//
// Plaintext by default; with LOGSTORE_INTEROP_TLS_CA (and
// LOGSTORE_INTEROP_TOKEN) it connects over TLS with a bearer token.
//
// A KIP-848 member of GROUP on TOPIC using only the .proto files
// (groups.proto, logstore.proto) over @grpc/grpc-js, no generated code:
// joins with ConsumerGroupHeartbeat (member_epoch 0), heartbeats every
// heartbeat_interval_ms of the broker's last reply reporting the partitions
// it owns, fetches the partitions of the reply's `assignment` from the
// group's committed offset (OffsetFetch; the log start when none), commits
// what it processed after every fetch round (OffsetCommit with member id and
// epoch), and for the partitions in `revoking` commits, stops fetching and
// reports them released at once. Driven by tests/test_interop_node.py.
//
// stdout: one JSON object per line ("ev" names the event; times are
// Date.now() ms, the same clock as the Python side's time.time()):
//   joined {member_id, epoch, interval_ms}
//   assigned {t, partitions, from}     t: before the first fetch of them
//   consumed {p, offsets, values}      records processed (values as UTF-8)
//   revoked {t, partitions, committed} t: after the last fetch of them
//   check {name, ok, detail}           the fencing checks ("fence" below)
//   fence-done {}, left {}, error {message}
// stdin, one command a line: "fence" commits with a stale epoch, a future
// epoch, an unknown member id and a partition it does not own, and checks
// each precise error (code and ErrorInfo reason) and that nothing changed;
// "leave" commits, leaves (member_epoch -1) and exits 0.
// Exits 1 on an unexpected error or after the 60 s watchdog, 2 on usage.

import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const PROTO_DIR = path.resolve(HERE, "..", "..", "proto");
const CALL_TIMEOUT_MS = 10_000;
const FETCH_WAIT_MS = 100; // long poll per round: a revocation is applied within ~100 ms
const CLIENT_ID = "node-interop";
const require = createRequire(import.meta.url);

const [address, groupId, topic] = process.argv.slice(2);
if (!address || !groupId || !topic || process.argv.length > 5) {
  console.error("usage: node tests/interop/group_member.mjs HOST:PORT GROUP TOPIC");
  process.exit(2);
}

const emit = (ev, fields = {}) => console.log(JSON.stringify({ ev, ...fields }));

// ------------------------------------------------------------ the client --

const OPTIONS = { includeDirs: [PROTO_DIR], keepCase: true, longs: String, enums: String, bytes: Buffer, defaults: true, oneofs: true };
const proto = grpc.loadPackageDefinition(protoLoader.loadSync(["logstore/v1/logstore.proto", "logstore/v1/groups.proto"], OPTIONS));
// TLS + a bearer token when the test asks for them, as interop.mjs: the CA
// file and the token come from the environment (LOGSTORE_INTEROP_TLS_CA,
// LOGSTORE_INTEROP_TOKEN) so the token never shows in a process listing.
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
const credentials = channelCredentials();
const logstore = new proto.logstore.v1.LogStore(address, credentials);
const groups = new proto.logstore.v1.Groups(address, credentials);

function unary(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: new Date(Date.now() + CALL_TIMEOUT_MS) }, (err, res) => (err ? reject(err) : resolve(res)));
  });
}

// The ErrorInfo of a failed call, from its rich status (the
// "grpc-status-details-bin" trailer, a google.rpc.Status), as interop.mjs.
const protobuf = require("protobufjs");
const rpcRoot = new protobuf.Root();
rpcRoot.resolvePath = (_origin, target) => (target.startsWith("google/protobuf/") ? target : path.join(PROTO_DIR, target));
rpcRoot.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"], { keepCase: true });
const StatusType = rpcRoot.lookupType("google.rpc.Status");
const ErrorInfoType = rpcRoot.lookupType("google.rpc.ErrorInfo");

function errorInfo(err) {
  const bin = err?.metadata?.get("grpc-status-details-bin")?.[0];
  if (!bin) return null;
  for (const any of StatusType.decode(Buffer.from(bin)).details) {
    if (any.type_url === "type.googleapis.com/google.rpc.ErrorInfo") return ErrorInfoType.toObject(ErrorInfoType.decode(any.value));
  }
  return null;
}

const reasonOf = (err) => errorInfo(err)?.reason;
const codeName = (code) => Object.keys(grpc.status).find((k) => grpc.status[k] === code) ?? String(code);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ------------------------------------------------------ the member state --

let memberId = "";
let epoch = 0; // 0 = join
let previousEpoch = null; // the epoch before the last change (for the fencing check)
let intervalMs = 3000;
let target = new Set(); // the last reply's assignment (revoking excluded)
const owned = new Map(); // partition -> next offset to fetch; reported in heartbeats
const committed = new Map(); // partition -> last offset committed
let stopping = false;
let beats = 0; // heartbeat replies so far
let wakeHeartbeat = () => {};
const beatWaiters = [];

function partitionSet(parts) {
  const ps = [...parts].sort((a, b) => a - b);
  return { topics: ps.length ? [{ topic, partitions: ps }] : [] };
}

const partitionsOf = (set) => (set?.topics ?? []).filter((t) => t.topic === topic).flatMap((t) => t.partitions);

async function heartbeatOnce() {
  const req = { group_id: groupId, member_id: memberId, member_epoch: epoch, owned: partitionSet(owned.keys()) };
  if (epoch === 0) Object.assign(req, { topic_names: { names: [topic] }, client_id: CLIENT_ID, rebalance_timeout_ms: 30_000 });
  let reply;
  try {
    reply = await unary(groups, "ConsumerGroupHeartbeat", req);
  } catch (err) {
    const reason = reasonOf(err);
    if (reason !== "UNKNOWN_MEMBER_ID" && reason !== "FENCED_MEMBER_EPOCH") throw err;
    // groups.proto: release every partition without committing, rejoin with epoch 0.
    emit("lost", { reason, partitions: [...owned.keys()] });
    owned.clear();
    target = new Set();
    epoch = 0;
    if (reason === "UNKNOWN_MEMBER_ID") memberId = "";
    return;
  }
  const joined = epoch === 0;
  if (reply.member_epoch !== epoch && !joined) previousEpoch = epoch;
  memberId = reply.member_id;
  epoch = reply.member_epoch;
  if (reply.heartbeat_interval_ms > 0) intervalMs = reply.heartbeat_interval_ms;
  const revoking = new Set(partitionsOf(reply.revoking));
  target = new Set(partitionsOf(reply.assignment).filter((p) => !revoking.has(p)));
  if (joined) emit("joined", { member_id: memberId, epoch, interval_ms: intervalMs });
  beats += 1;
  beatWaiters.splice(0).forEach((w) => w());
}

// One heartbeat at a time, every intervalMs, or at once after wake().
async function heartbeatLoop() {
  while (!stopping) {
    await heartbeatOnce();
    await new Promise((resolve) => {
      const timer = setTimeout(resolve, intervalMs);
      wakeHeartbeat = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }
}

// Resolves after a heartbeat that started after this call has replied.
function nextBeat() {
  const want = beats + 2;
  wakeHeartbeat();
  return new Promise((resolve) => {
    const check = () => (beats >= want || stopping ? resolve() : beatWaiters.push(check));
    check();
  });
}

// Commits the positions of `parts` that moved since the last commit. A reply
// with a new epoch may race the commit (STALE_MEMBER_EPOCH): beat, retry.
async function commit(parts) {
  const todo = [...parts].filter((p) => owned.has(p) && committed.get(p) !== owned.get(p));
  if (!todo.length) return;
  for (let attempt = 0; ; attempt++) {
    const req = { group_id: groupId, member_id: memberId, member_epoch: epoch, partitions: todo.map((p) => ({ topic, partition: p, offset: owned.get(p), metadata: CLIENT_ID })) };
    try {
      await unary(groups, "OffsetCommit", req);
      todo.forEach((p) => committed.set(p, owned.get(p)));
      return;
    } catch (err) {
      if (reasonOf(err) !== "STALE_MEMBER_EPOCH" || attempt >= 3) throw err;
      await nextBeat();
    }
  }
}

// Applies the last reply: release what left the target (commit first), then
// start what joined it at the group's committed offset.
async function reconcile() {
  const released = [...owned.keys()].filter((p) => !target.has(p)).sort((a, b) => a - b);
  if (released.length) {
    await commit(released);
    const positions = Object.fromEntries(released.map((p) => [p, owned.get(p)]));
    released.forEach((p) => {
      owned.delete(p);
      committed.delete(p);
    });
    emit("revoked", { t: Date.now(), partitions: released, committed: positions });
    wakeHeartbeat(); // report them released now, not in intervalMs
  }
  const added = [...target].filter((p) => !owned.has(p)).sort((a, b) => a - b);
  if (!added.length) return;
  const got = await unary(groups, "OffsetFetch", { group_id: groupId, partitions: [{ topic, partitions: added }] });
  const from = {};
  for (const o of got.offsets) from[o.partition] = o.offset;
  const fresh = added.filter((p) => from[p] === undefined || BigInt(from[p]) < 0n);
  if (fresh.length) {
    const start = await unary(logstore, "ListOffsets", { topic, partitions: fresh, position: "OFFSET_SPEC_EARLIEST" });
    for (const o of start.offsets) from[o.partition] = o.offset;
  }
  for (const p of added) {
    owned.set(p, String(from[p]));
    committed.set(p, String(from[p]));
  }
  emit("assigned", { t: Date.now(), partitions: added, from });
}

// records.proto: with attributes bit 3 a record's offset is base + offset_delta.
function recordsOf(batches, from) {
  const out = [];
  for (const b of batches) {
    const base = BigInt(b.base_offset);
    b.records.forEach((r, i) => {
      const offset = base + BigInt(b.attributes & 0x08 ? r.offset_delta || 0 : i);
      if (offset >= from) out.push({ offset, value: r.value });
    });
  }
  return out;
}

async function fetchRound() {
  const parts = [...owned.keys()];
  const replies = await Promise.all(
    parts.map((p) => unary(logstore, "Fetch", { topic, partition: p, offset: owned.get(p), min_bytes: 1, max_wait_ms: FETCH_WAIT_MS })),
  );
  parts.forEach((p, i) => {
    const recs = recordsOf(replies[i].batches, BigInt(owned.get(p)));
    if (!recs.length) return;
    if (!owned.has(p)) return; // lost meanwhile (a fencing error): not processed
    emit("consumed", { p, offsets: recs.map((r) => Number(r.offset)), values: recs.map((r) => r.value?.toString() ?? null) });
    owned.set(p, String(recs[recs.length - 1].offset + 1n));
  });
  await commit(parts);
}

// ------------------------------------------------------- the fence check --

async function expectCommitError(name, req, code, reason) {
  try {
    await unary(groups, "OffsetCommit", req);
    emit("check", { name, ok: false, detail: "the commit succeeded" });
  } catch (err) {
    const got = [codeName(err.code), reasonOf(err)];
    const ok = got[0] === codeName(code) && got[1] === reason && !!err.details;
    emit("check", { name, ok, detail: `${got[0]} ${got[1]}: ${err.details}` });
  }
}

async function fenceCheck() {
  const mine = [...owned.keys()].sort((a, b) => a - b);
  const p = mine[0];
  const before = await unary(groups, "OffsetFetch", { group_id: groupId, partitions: [{ topic, partitions: [0, 1, 2, 3] }] });
  const commitReq = (member, e, part) => ({ group_id: groupId, member_id: member, member_epoch: e, partitions: [{ topic, partition: part, offset: "0" }] });
  emit("check", { name: "owns a partition and had an earlier epoch", ok: p !== undefined && previousEpoch !== null && previousEpoch < epoch, detail: `owned ${mine}, epochs ${previousEpoch} -> ${epoch}` });
  await expectCommitError(`commit with the previous epoch ${previousEpoch} -> FAILED_PRECONDITION STALE_MEMBER_EPOCH`, commitReq(memberId, previousEpoch, p), grpc.status.FAILED_PRECONDITION, "STALE_MEMBER_EPOCH");
  await expectCommitError("commit with a future epoch -> FAILED_PRECONDITION FENCED_MEMBER_EPOCH", commitReq(memberId, epoch + 5, p), grpc.status.FAILED_PRECONDITION, "FENCED_MEMBER_EPOCH");
  await expectCommitError("commit as an unknown member -> FAILED_PRECONDITION UNKNOWN_MEMBER_ID", commitReq("no-such-member", epoch, p), grpc.status.FAILED_PRECONDITION, "UNKNOWN_MEMBER_ID");
  const other = [0, 1, 2, 3].find((q) => !owned.has(q));
  await expectCommitError(`commit of partition ${other}, not owned -> FAILED_PRECONDITION PARTITION_NOT_ASSIGNED`, commitReq(memberId, epoch, other), grpc.status.FAILED_PRECONDITION, "PARTITION_NOT_ASSIGNED");
  const after = await unary(groups, "OffsetFetch", { group_id: groupId, partitions: [{ topic, partitions: [0, 1, 2, 3] }] });
  const offsets = (r) => r.offsets.map((o) => [o.partition, o.offset]);
  emit("check", { name: "the refused commits changed no committed offset", ok: JSON.stringify(offsets(before)) === JSON.stringify(offsets(after)), detail: JSON.stringify([offsets(before), offsets(after)]) });
  // The member is still in the group at its epoch: a commit of its own works.
  let ok = true;
  let detail = "";
  try {
    await unary(groups, "OffsetCommit", { ...commitReq(memberId, epoch, p), partitions: [{ topic, partition: p, offset: owned.get(p) }] });
  } catch (err) {
    ok = false;
    detail = `${codeName(err.code)} ${reasonOf(err)}: ${err.details}`;
  }
  emit("check", { name: "after the refusals, a commit with the current epoch succeeds", ok, detail });
  emit("fence-done");
}

// ------------------------------------------------------------------ main --

const commands = [];
readline.createInterface({ input: process.stdin }).on("line", (line) => commands.push(line.trim()));

async function main() {
  await heartbeatOnce(); // the join: errors surface here
  const beating = heartbeatLoop();
  for (;;) {
    const cmd = commands.shift();
    if (cmd === "leave") break;
    if (cmd === "fence") await fenceCheck();
    await reconcile();
    if (owned.size) await fetchRound();
    else await sleep(FETCH_WAIT_MS);
  }
  // Leaving releases everything: commit, stop fetching, then epoch -1.
  const mine = [...owned.keys()].sort((a, b) => a - b);
  await commit(mine);
  emit("revoked", { t: Date.now(), partitions: mine, committed: Object.fromEntries(committed) });
  stopping = true;
  wakeHeartbeat();
  await beating;
  await unary(groups, "ConsumerGroupHeartbeat", { group_id: groupId, member_id: memberId, member_epoch: -1 });
  emit("left");
}

const watchdog = setTimeout(() => {
  emit("error", { message: "watchdog: 60 s" });
  process.exit(1);
}, 60_000);

let code = 0;
try {
  await main();
} catch (err) {
  emit("error", { message: err?.code !== undefined ? `gRPC ${codeName(err.code)} ${reasonOf(err)}: ${err.details}` : String(err?.stack || err) });
  code = 1;
} finally {
  clearTimeout(watchdog);
  logstore.close();
  groups.close();
}
process.exit(code);
