// Issue #13's acceptance test: LangChain's agent-chat-ui, unchanged, in a real (headless)
// Chromium, holding a conversation against Spindle: two turns, regenerate and its branch
// switcher, editing the first and a later message, continuing on an older branch, and a
// human-in-the-loop interrupt approved, rejected, edited and marked as resolved; then the `llm`
// agent against testkit's model and MCP servers: a streamed answer, a tool call and its result,
// an approval approved and rejected. See README.md here; `npm test` runs it.
//
// It starts testkit's servers (`spindle-testkit servers`: the model and MCP servers), Spindle (a fresh
// SQLite database, the llm agent pointed at them), agent-chat-ui's `next dev` and Chromium, and
// stops all four, by pid, when it ends. Everything it records goes to one directory
// (E2E_OUT, default /tmp/spindle-e2e-agent-chat-ui-<time>): screenshots, every request the
// page sent to Spindle with its answer (network.jsonl), the logs, and report.json.

import { spawn, spawnSync } from "node:child_process";
import { createWriteStream, existsSync, mkdirSync, writeFileSync, appendFileSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { isDeepStrictEqual } from "node:util";
import { chromium } from "playwright-core";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, "../../..");

// agent-chat-ui as tested: its commit, and the package manager its lockfile is for.
const ACU_REPO = "https://github.com/langchain-ai/agent-chat-ui";
const ACU_COMMIT = "fdc87e65307581b02898d33c62b3f285e56bd85b";
const PNPM = "pnpm@10.5.1";

const env = process.env;
const ACU_DIR = path.resolve(env.ACU_DIR ?? path.join(REPO, "..", "agent-chat-ui"));
const CHROMIUM = env.CHROMIUM ?? "/usr/bin/chromium";
const ASSISTANT = env.E2E_ASSISTANT ?? "synthetic";
const OUT = path.resolve(
  env.E2E_OUT ?? `/tmp/spindle-e2e-agent-chat-ui-${new Date().toISOString().replace(/[:.]/g, "-")}`,
);
const HEADED = env.E2E_HEADED === "1";
// Which groups of steps run: all by default, or a comma-separated list of
// conversation (a, b, c), branches (e), hitl (d), llm (f).
const GROUPS = ["conversation", "branches", "hitl", "llm"];
const ONLY = env.E2E_ONLY ? env.E2E_ONLY.split(",").map((g) => g.trim()) : GROUPS;
for (const g of ONLY) if (!GROUPS.includes(g)) throw new Error(`E2E_ONLY: unknown group ${g} (one of ${GROUPS.join(", ")})`);
const TARGET = path.resolve(env.CARGO_TARGET_DIR ?? path.join(REPO, "target"));

const HITL_VALUE = {
  action_requests: [{ name: "send_email", args: { to: "a@b.c" }, description: "Please review" }],
  review_configs: [{ action_name: "send_email", allowed_decisions: ["approve", "edit", "reject"] }],
};

mkdirSync(OUT, { recursive: true });
const log = (...args) => console.log(`[e2e ${new Date().toISOString().slice(11, 19)}]`, ...args);

// ---------------------------------------------------------------------------------------------
// Processes: each started in its own process group and stopped by its pid.

const children = [];

function start(name, cmd, args, options) {
  const logFile = path.join(OUT, `${name}.log`);
  const out = createWriteStream(logFile);
  const child = spawn(cmd, args, { ...options, detached: true, stdio: ["ignore", "pipe", "pipe"] });
  child.stdout.pipe(out);
  child.stderr.pipe(out);
  child.logFile = logFile;
  children.push({ name, child });
  log(`started ${name} (pid ${child.pid}), log ${logFile}`);
  return child;
}

function stopAll() {
  for (const { name, child } of children.reverse()) {
    if (child.exitCode === null && child.signalCode === null) {
      try {
        process.kill(-child.pid, "SIGTERM"); // its process group: next dev's workers too
        log(`stopped ${name} (pid ${child.pid})`);
      } catch {
        // already gone
      }
    }
  }
  children.length = 0;
}

for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => {
    stopAll();
    process.exit(130);
  });
}
process.on("exit", stopAll);

function run(cmd, args, options = {}) {
  log(`$ ${cmd} ${args.join(" ")}${options.cwd ? `  (in ${options.cwd})` : ""}`);
  const result = spawnSync(cmd, args, { stdio: "inherit", ...options });
  if (result.status !== 0) throw new Error(`${cmd} ${args.join(" ")} exited ${result.status}`);
}

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitUntil(what, fn, timeoutMs = 30_000, everyMs = 200) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}` + (last instanceof Error ? `: ${last.message}` : ""));
    }
    await sleep(everyMs);
  }
}

function lineFrom(child, re, timeoutMs) {
  return new Promise((resolve, reject) => {
    let buf = "";
    const timer = setTimeout(() => reject(new Error(`no line matching ${re} within ${timeoutMs} ms; see ${child.logFile}`)), timeoutMs);
    const onData = (d) => {
      buf += d.toString();
      const m = buf.match(re);
      if (m) {
        clearTimeout(timer);
        child.stdout.off("data", onData);
        resolve(m);
      }
    };
    child.stdout.on("data", onData);
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`exited (${code}) before printing ${re}; see ${child.logFile}`));
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Setup: agent-chat-ui, Spindle, next dev.

function setupAgentChatUi() {
  if (!existsSync(path.join(ACU_DIR, "package.json"))) {
    log(`agent-chat-ui not found at ${ACU_DIR}: cloning ${ACU_REPO} at ${ACU_COMMIT}`);
    run("git", ["clone", "--quiet", ACU_REPO, ACU_DIR]);
    run("git", ["-c", "advice.detachedHead=false", "checkout", "--quiet", ACU_COMMIT], { cwd: ACU_DIR });
  }
  if (!existsSync(path.join(ACU_DIR, "node_modules", "next"))) {
    run("npx", ["-y", PNPM, "install", "--frozen-lockfile"], { cwd: ACU_DIR });
  }
}

function spindleBinary() {
  if (env.SPINDLE_BIN) return path.resolve(env.SPINDLE_BIN);
  run("cargo", ["build", "-p", "spindle-server"], { cwd: REPO });
  return path.join(TARGET, "debug", "spindle");
}

function testkitServersBinary() {
  if (env.TESTKIT_SERVERS_BIN) return path.resolve(env.TESTKIT_SERVERS_BIN);
  run("cargo", ["build", "-p", "spindle-testkit", "--bin", "spindle-testkit"], { cwd: REPO });
  return path.join(TARGET, "debug", "spindle-testkit");
}

// testkit's model server (OpenAI-compatible) and MCP server, one process; it prints both URLs.
async function startTestkitServers(bin) {
  const child = start("testkit-servers", bin, ["servers"], { cwd: OUT });
  const [, model, mcp] = await lineFrom(child, /model (http:\/\/\S+)\s+mcp (http:\/\/\S+)/, 30_000);
  log(`model server at ${model}, MCP server at ${mcp}`);
  return { model, mcp };
}

async function startSpindle(bin, testkit) {
  const db = path.join(OUT, "db.sqlite");
  const llmArgs = testkit ? ["--llm-base-url", testkit.model, "--mcp", `math=${testkit.mcp}`] : [];
  const child = start("spindle", bin, ["serve", "--listen", "127.0.0.1:0", "--database-url", `sqlite://${db}`, "--log", "info,tower_http=debug", ...llmArgs], {
    cwd: OUT,
  });
  const [, url] = await lineFrom(child, /spindle listening on (http:\/\/\S+)/, 60_000);
  log(`spindle at ${url}`);
  return url;
}

async function startNextDev(spindleUrl) {
  const port = Number(env.ACU_PORT ?? (await freePort()));
  const child = start("next-dev", path.join(ACU_DIR, "node_modules", ".bin", "next"), ["dev", "-H", "127.0.0.1", "-p", String(port)], {
    cwd: ACU_DIR,
    env: {
      ...env,
      NEXT_TELEMETRY_DISABLED: "1",
      NEXT_PUBLIC_API_URL: spindleUrl,
      NEXT_PUBLIC_ASSISTANT_ID: ASSISTANT,
      // Offline: next/font/google would fetch Inter from fonts.googleapis.com.
      NEXT_FONT_GOOGLE_MOCKED_RESPONSES: path.join(HERE, "google-fonts-mock.cjs"),
    },
  });
  await lineFrom(child, /Ready in/, 120_000);
  const url = `http://127.0.0.1:${port}`;
  // The first request compiles the page (about a minute on two cores).
  log(`next dev at ${url}; compiling the page`);
  const t0 = Date.now();
  const res = await fetch(url + "/", { signal: AbortSignal.timeout(300_000) });
  if (!res.ok) throw new Error(`next dev answered ${res.status} for /; see ${child.logFile}`);
  log(`page compiled in ${((Date.now() - t0) / 1000).toFixed(0)} s`);
  return url;
}

// ---------------------------------------------------------------------------------------------
// Spindle's HTTP API, for what the UI cannot do (start an interrupting run) and for checks.

let SPINDLE;

async function api(method, route, body) {
  const res = await fetch(SPINDLE + route, {
    method,
    headers: body === undefined ? {} : { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${route} -> ${res.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

async function interruptedThread(text) {
  const thread = await api("POST", "/threads", { metadata: { graph_id: "synthetic" } });
  const result = await api("POST", `/threads/${thread.thread_id}/runs/wait`, {
    assistant_id: "synthetic",
    input: { messages: [{ type: "human", content: text }], n: 0, interrupt: HITL_VALUE },
  });
  const got = await api("GET", `/threads/${thread.thread_id}`);
  if (got.status !== "interrupted") throw new Error(`thread not interrupted after runs/wait: ${JSON.stringify(got)}; run answered ${JSON.stringify(result)}`);
  return thread.thread_id;
}

// ---------------------------------------------------------------------------------------------
// The page: network record, transcript, toasts.

const network = []; // every request the page sent to Spindle, with its answer
const consoleErrors = [];

function recordNetwork(page) {
  const started = new Map();
  page.on("request", (req) => {
    if (!req.url().startsWith(SPINDLE)) return;
    const entry = { t: Date.now(), method: req.method(), url: req.url().slice(SPINDLE.length), body: req.postData() ?? undefined };
    started.set(req, entry);
    network.push(entry);
  });
  page.on("response", async (res) => {
    const entry = started.get(res.request());
    if (!entry) return;
    entry.status = res.status();
    const type = res.headers()["content-type"] ?? "";
    if (type.includes("text/event-stream") && entry.status < 400) {
      // The stream's events by name (`values`, `messages`, ...), read once it has ended.
      res
        .text()
        .then((body) => {
          entry.events = {};
          for (const m of body.matchAll(/^event: (\S+)/gm)) entry.events[m[1]] = (entry.events[m[1]] ?? 0) + 1;
        })
        .catch(() => {});
    }
    if (entry.status >= 400 || !type.includes("text/event-stream")) {
      try {
        entry.response = (await res.text()).slice(0, 20_000);
      } catch {
        // a body the page is still reading, or gone
      }
    }
  });
  page.on("requestfailed", (req) => {
    const entry = started.get(req);
    if (entry) entry.failed = req.failure()?.errorText;
  });
  page.on("requestfinished", (req) => {
    const entry = started.get(req);
    if (entry) entry.finished = Date.now();
  });
  page.on("console", (msg) => {
    if (msg.type() === "error") consoleErrors.push({ t: Date.now(), text: msg.text() });
  });
  page.on("pageerror", (err) => consoleErrors.push({ t: Date.now(), text: `pageerror: ${err.message}` }));
}

// Human messages are `div.group.ml-auto`, AI messages `div.group.mr-auto` (agent-chat-ui's
// messages/human.tsx and messages/ai.tsx); whitespace collapsed.
async function transcript(page) {
  return page.evaluate(() =>
    [...document.querySelectorAll("div.group.ml-auto, div.group.mr-auto")].map((el) => {
      const squash = (s) => (s ?? "").replace(/\s+/g, " ").trim();
      if (el.classList.contains("ml-auto")) {
        const p = el.querySelector("p.whitespace-pre-wrap");
        return "h:" + squash(p?.textContent);
      }
      const body = el.querySelector(":scope > div > div.py-1");
      return "a:" + squash(body?.innerText);
    }),
  );
}

const errorToasts = (page) => page.locator('[data-sonner-toast][data-type="error"]');

async function idle(page) {
  // Not streaming: the composer shows Send, not Cancel.
  await page.getByRole("button", { name: "Send", exact: true }).waitFor({ state: "visible", timeout: 60_000 });
}

// After a run: its stream request finished, and a history fetch sent after it finished too
// (useStream refetches history when a run ends; branches and interrupts come from it).
async function settled(page, since) {
  await waitUntil(
    "the run's stream and the history refetch after it",
    () => {
      const streams = network.filter((e) => e.t >= since && /\/runs\/stream$/.test(e.url));
      const last = streams.at(-1);
      if (!last || !last.finished) return false;
      return network.some((e) => e.t >= last.finished - 50 && e.url.endsWith("/history") && e.finished);
    },
    60_000,
  );
  await idle(page);
  await sleep(300);
}

// ---------------------------------------------------------------------------------------------
// Steps.

const results = [];
let shot = 0;

async function screenshot(page, name) {
  const file = path.join(OUT, `${String(++shot).padStart(2, "0")}-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

async function step(page, name, fn, { record = transcript } = {}) {
  const since = Date.now();
  const t0 = performance.now();
  const result = { name, ok: false };
  results.push(result);
  log(`— ${name}`);
  try {
    result.detail = await fn(since);
    const toasts = await errorToasts(page).allInnerTexts();
    if (toasts.length) throw new Error(`error toast(s) visible: ${JSON.stringify(toasts)}`);
    result.ok = true;
  } catch (e) {
    result.error = e.message.split("\n")[0];
    result.stack = e.stack;
  }
  const bad = network.filter((e) => e.t >= since && e.status >= 400);
  if (bad.length) {
    result.ok = false;
    result.failedRequests = bad;
    result.error ??= `Spindle answered ${bad.map((e) => `${e.status} to ${e.method} ${e.url}`).join(", ")}`;
  }
  result.transcript = await record(page).catch(() => undefined);
  result.screenshot = await screenshot(page, name.replace(/[^a-z0-9]+/gi, "-").toLowerCase()).catch(() => undefined);
  result.seconds = Number(((performance.now() - t0) / 1000).toFixed(1));
  log(`  ${result.ok ? "PASS" : "FAIL"} ${name} (${result.seconds} s)${result.ok ? "" : ": " + result.error}`);
  if (!result.ok && result.failedRequests) {
    for (const r of result.failedRequests) log(`    ${r.method} ${r.url}\n      sent:   ${r.body}\n      answer: ${r.status} ${r.response}`);
  }
  return result.ok;
}

function assertTranscript(got, want) {
  if (!isDeepStrictEqual(got, want)) throw new Error(`transcript ${JSON.stringify(got)}, expected ${JSON.stringify(want)}`);
}

const message = (page, kind, text) =>
  page.locator(kind === "h" ? "div.group.ml-auto" : "div.group.mr-auto").filter({ hasText: text });

async function send(page, text) {
  const box = page.getByPlaceholder("Type your message...");
  await box.fill(text);
  await box.press("Enter");
}

// agent-chat-ui takes its deployment URL, assistant and thread from the query string
// (providers/Stream.tsx: apiUrl, assistantId, threadId), over NEXT_PUBLIC_API_URL and
// NEXT_PUBLIC_ASSISTANT_ID.
function uiUrl(base, params) {
  return `${base}/?${new URLSearchParams({ apiUrl: SPINDLE, assistantId: ASSISTANT, ...params })}`;
}

async function conversation(browser, base) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(30_000);
  recordNetwork(page);

  const ok = await step(page, "a1 send one", async (since) => {
    await page.goto(uiUrl(base), { timeout: 120_000 });
    await send(page, "one");
    await message(page, "a", "echo: one").waitFor();
    await settled(page, since);
    if (!new URL(page.url()).searchParams.get("threadId")) throw new Error(`no threadId in the URL: ${page.url()}`);
    assertTranscript(await transcript(page), ["h:one", "a:echo: one"]);
  });
  if (!ok) return context.close();
  const threadId = new URL(page.url()).searchParams.get("threadId");

  if (
    !(await step(page, "a2 send two", async (since) => {
      await send(page, "two");
      await message(page, "a", "echo: two").waitFor();
      await settled(page, since);
      assertTranscript(await transcript(page), ["h:one", "a:echo: one", "h:two", "a:echo: two"]);
    }))
  )
    return context.close();

  await step(page, "b1 regenerate the last answer", async (since) => {
    const before = await aiMessageIds(threadId);
    const last = message(page, "a", "echo: two");
    await last.hover();
    await last.getByRole("button", { name: "Refresh", exact: true }).click();
    await settled(page, since);
    assertTranscript(await transcript(page), ["h:one", "a:echo: one", "h:two", "a:echo: two"]);
    const after = await aiMessageIds(threadId);
    // The answer is the same text (echo), so the new one is told apart by its id on the server.
    const fresh = after.filter((m) => !before.includes(m));
    if (fresh.length !== 1) throw new Error(`expected one new AI message in the thread's history, got ${JSON.stringify(fresh)}`);
    await last.hover();
    await waitUntil('"2 / 2" on the regenerated answer', async () => (await last.getByText("2 / 2", { exact: true }).count()) === 1, 10_000);
    return { newAiMessageId: fresh[0] };
  });

  await step(page, "b2 switch to branch 1 and back", async () => {
    const last = message(page, "a", "echo: two");
    await last.hover();
    await last.locator("button:has(svg.lucide-chevron-left)").click();
    await waitUntil('"1 / 2"', async () => (await message(page, "a", "echo: two").getByText("1 / 2", { exact: true }).count()) === 1, 10_000);
    assertTranscript(await transcript(page), ["h:one", "a:echo: one", "h:two", "a:echo: two"]);
    await screenshot(page, "branch-1-of-2");
    await message(page, "a", "echo: two").hover();
    await message(page, "a", "echo: two").locator("button:has(svg.lucide-chevron-right)").click();
    await waitUntil('"2 / 2" again', async () => (await message(page, "a", "echo: two").getByText("2 / 2", { exact: true }).count()) === 1, 10_000);
  });

  await step(page, "c edit the first message", async (since) => {
    const first = message(page, "h", "one").first();
    await first.hover();
    await first.getByRole("button", { name: "Edit", exact: true }).click();
    const editor = page.locator("div.group.ml-auto textarea");
    await editor.fill("ONE edited");
    await page.locator("div.group.ml-auto").getByRole("button", { name: "Submit", exact: true }).click();
    await message(page, "a", "echo: ONE edited").waitFor();
    await settled(page, since);
    assertTranscript(await transcript(page), ["h:ONE edited", "a:echo: ONE edited"]);
    const human = message(page, "h", "ONE edited");
    await human.hover();
    await waitUntil('"2 / 2" on the edited message', async () => (await human.getByText("2 / 2", { exact: true }).count()) === 1, 10_000);
  });

  await step(page, "c2 edited thread after a reload", async () => {
    await page.reload();
    await message(page, "a", "echo: ONE edited").waitFor();
    await idle(page);
    await sleep(500);
    assertTranscript(await transcript(page), ["h:ONE edited", "a:echo: ONE edited"]);
  });

  await step(page, "c3 continue after the edit", async (since) => {
    await send(page, "three");
    await message(page, "a", "echo: three").waitFor();
    await settled(page, since);
    assertTranscript(await transcript(page), ["h:ONE edited", "a:echo: ONE edited", "h:three", "a:echo: three"]);
  });

  await step(page, "c4 edit a middle message", async (since) => {
    const third = message(page, "h", "three");
    await third.hover();
    await third.getByRole("button", { name: "Edit", exact: true }).click();
    await page.locator("div.group.ml-auto textarea").fill("THREE edited");
    await page.locator("div.group.ml-auto").getByRole("button", { name: "Submit", exact: true }).click();
    await message(page, "a", "echo: THREE edited").waitFor();
    await settled(page, since);
    assertTranscript(await transcript(page), ["h:ONE edited", "a:echo: ONE edited", "h:THREE edited", "a:echo: THREE edited"]);
    const human = message(page, "h", "THREE edited");
    await human.hover();
    await waitUntil('"2 / 2" on the edited message', async () => (await human.getByText("2 / 2", { exact: true }).count()) === 1, 10_000);
  });

  await context.close();
}

// On a thread of its own: regenerate, go back to the first answer and continue from there
// (useStream then sends that branch's head checkpoint), then switch branches, which now differ.
// The fifth run takes the thread past the 10 newest checkpoints that agent-chat-ui reads: the
// branches must still show from a history whose root is cut off (ids sort in creation order).
async function olderBranch(browser, base) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(30_000);
  recordNetwork(page);
  let threadId;
  let oldAnswer;

  const ready = await step(page, "e1 one, two, regenerate", async (since) => {
    await page.goto(uiUrl(base), { timeout: 120_000 });
    await send(page, "one");
    await message(page, "a", "echo: one").waitFor();
    await settled(page, since);
    threadId = new URL(page.url()).searchParams.get("threadId");
    const t = Date.now();
    await send(page, "two");
    await message(page, "a", "echo: two").waitFor();
    await settled(page, t);
    oldAnswer = (await headMessages(threadId))[3].id;
    const r = Date.now();
    await message(page, "a", "echo: two").hover();
    await message(page, "a", "echo: two").getByRole("button", { name: "Refresh", exact: true }).click();
    await settled(page, r);
    const newAnswer = (await headMessages(threadId))[3].id;
    if (newAnswer === oldAnswer) throw new Error("the regenerated answer has the old id");
    await message(page, "a", "echo: two").hover();
    await waitUntil('"2 / 2"', async () => (await message(page, "a", "echo: two").getByText("2 / 2", { exact: true }).count()) === 1, 10_000);
    return { threadId, oldAnswer, newAnswer };
  });
  if (!ready) return context.close();

  await step(page, "e2 continue on branch 1", async (since) => {
    const answer = message(page, "a", "echo: two");
    await answer.hover();
    await answer.locator("button:has(svg.lucide-chevron-left)").click();
    await waitUntil('"1 / 2"', async () => (await answer.getByText("1 / 2", { exact: true }).count()) === 1, 10_000);
    const history = await api("POST", `/threads/${threadId}/history`, { limit: 100 });
    const branchOneHead = history.find((s) => s.values.messages?.at(-1)?.id === oldAnswer && s.next.length === 0);
    await send(page, "three");
    await message(page, "a", "echo: three").waitFor(); // streamed
    await settled(page, since);
    const sent = network.filter((e) => e.t >= since && /\/runs\/stream$/.test(e.url)).map((e) => JSON.parse(e.body));
    if (sent.at(-1)?.checkpoint?.checkpoint_id !== branchOneHead.checkpoint.checkpoint_id) {
      throw new Error(`sent checkpoint ${JSON.stringify(sent.at(-1)?.checkpoint)}, expected branch 1's head ${branchOneHead.checkpoint.checkpoint_id}`);
    }
    const head = (await headMessages(threadId)).map((m) => m.id);
    if (head.length !== 6 || head[3] !== oldAnswer) throw new Error(`"three" did not continue from the first answer ${oldAnswer}: head ${JSON.stringify(head)}`);
    // useStream 1.8.10's submit without a checkpoint resets the branch to "" once the run ends,
    // and "" shows the newest child of each fork: here the regenerated answer, whose fork
    // checkpoint is newer than the first answer's. LangGraph's history is in the same order
    // (checkpoint ids, newest first; docs/langgraph-checkpoints.md §7), so against it the
    // view should jump to 2 / 2 as well.
    await answer.hover();
    await waitUntil('"2 / 2" (the newest fork child)', async () => (await answer.getByText("2 / 2", { exact: true }).count()) === 1, 10_000);
    assertTranscript(await transcript(page), ["h:one", "a:echo: one", "h:two", "a:echo: two"]);
    return { checkpointSent: sent.at(-1).checkpoint };
  });

  await step(page, "e3 branch 1 holds three, branch 2 not", async () => {
    const answer = message(page, "a", "echo: two");
    await answer.hover();
    await answer.locator("button:has(svg.lucide-chevron-left)").click();
    await waitUntil('"1 / 2"', async () => (await answer.getByText("1 / 2", { exact: true }).count()) === 1, 10_000);
    assertTranscript(await transcript(page), ["h:one", "a:echo: one", "h:two", "a:echo: two", "h:three", "a:echo: three"]);
    await screenshot(page, "e-branch-1-with-three");
    await answer.hover();
    await answer.locator("button:has(svg.lucide-chevron-right)").click();
    await waitUntil('"2 / 2"', async () => (await answer.getByText("2 / 2", { exact: true }).count()) === 1, 10_000);
    assertTranscript(await transcript(page), ["h:one", "a:echo: one", "h:two", "a:echo: two"]);
  });

  await step(page, "e4 continue on branch 2, history past 10", async (since) => {
    await send(page, "four");
    await message(page, "a", "echo: four").waitFor();
    await settled(page, since);
    const fetched = network.filter((e) => e.t >= since && e.url.endsWith("/history") && e.response).at(-1);
    const entries = JSON.parse(fetched.response);
    const all = await api("POST", `/threads/${threadId}/history`, { limit: 100 });
    if (!(all.length > 10 && entries.length === 10 && entries.every((s) => s.parent_checkpoint))) {
      throw new Error(`expected a history cut to its 10 newest (no root), got ${entries.length} of ${all.length}`);
    }
    assertTranscript(await transcript(page), ["h:one", "a:echo: one", "h:two", "a:echo: two", "h:four", "a:echo: four"]);
    const answer = message(page, "a", "echo: two");
    await answer.hover();
    await waitUntil('"2 / 2"', async () => (await answer.getByText("2 / 2", { exact: true }).count()) === 1, 10_000);
    await answer.locator("button:has(svg.lucide-chevron-left)").click();
    await waitUntil('"1 / 2"', async () => (await answer.getByText("1 / 2", { exact: true }).count()) === 1, 10_000);
    assertTranscript(await transcript(page), ["h:one", "a:echo: one", "h:two", "a:echo: two", "h:three", "a:echo: three"]);
    return { checkpoints: all.length };
  });

  await context.close();
}

async function headMessages(threadId) {
  return (await api("GET", `/threads/${threadId}/state`)).values?.messages ?? [];
}

async function aiMessageIds(threadId) {
  const history = await api("POST", `/threads/${threadId}/history`, { limit: 100 });
  const ids = new Set();
  for (const state of history) for (const m of state.values?.messages ?? []) if (m.type === "ai") ids.add(m.id);
  return [...ids];
}

function resumedWith(text) {
  const i = text.indexOf("resumed with: ");
  if (i < 0) return undefined;
  return JSON.parse(text.slice(i + "resumed with: ".length));
}

async function hitl(browser, base, decision) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 1000 } });
  const page = await context.newPage();
  page.setDefaultTimeout(30_000);
  recordNetwork(page);
  const text = `please send the email (${decision})`;
  let threadId;

  const shown = await step(page, `d ${decision}: interrupt shown`, async () => {
    threadId = await interruptedThread(text);
    // The interrupting run was synthetic's: the UI must resume it as synthetic.
    await page.goto(uiUrl(base, { threadId, assistantId: "synthetic" }), { timeout: 120_000 });
    await message(page, "h", text).waitFor();
    await page.getByText("send_email", { exact: true }).first().waitFor();
    await page.getByText("Edit/Approve", { exact: true }).waitFor();
    await page.getByRole("button", { name: "Submit rejection" }).waitFor();
    return { threadId };
  });
  if (!shown) return context.close();

  const expected = {
    approve: { decisions: [{ type: "approve" }] },
    reject: { decisions: [{ type: "reject", message: "not now" }] },
    edit: { decisions: [{ type: "edit", edited_action: { name: "send_email", args: { to: "x@y.z" } } }] },
  }[decision];

  await step(page, `d ${decision}: resume`, async (since) => {
    if (decision === "approve") {
      await page.getByRole("button", { name: "Approve", exact: true }).click();
    } else if (decision === "reject") {
      await page.getByPlaceholder("Share feedback with the agent...").fill("not now");
      await page.getByRole("button", { name: "Submit rejection" }).click();
    } else if (decision === "edit") {
      await page.locator("textarea:not([placeholder])").fill("x@y.z");
      await page.getByRole("button", { name: "Submit", exact: true }).click();
    } else if (decision === "resolve") {
      await page.getByRole("button", { name: "Mark as Resolved" }).click();
    }
    await settled(page, since);
    const sent = network.filter((e) => e.t >= since && /\/runs\/stream$/.test(e.url)).map((e) => JSON.parse(e.body));
    const thread = await api("GET", `/threads/${threadId}`);
    if (thread.status !== "idle") throw new Error(`thread status ${thread.status} after the resume`);
    if (decision === "resolve") {
      if (!isDeepStrictEqual(sent.at(-1)?.command, { goto: "__end__" })) throw new Error(`sent ${JSON.stringify(sent.at(-1))}`);
      await waitUntil("the HITL view to go", async () => (await page.getByRole("button", { name: "Submit rejection" }).count()) === 0, 10_000);
      return { sent: sent.at(-1), transcript: await transcript(page) };
    }
    const answer = message(page, "a", "resumed with:");
    await answer.waitFor();
    const got = await transcript(page);
    if (got.length !== 2 || got[0] !== `h:${text}`) throw new Error(`transcript ${JSON.stringify(got)}`);
    if (!got[1].startsWith(`a:echo: ${text} resumed with: `)) throw new Error(`answer ${JSON.stringify(got[1])}`);
    const resumed = resumedWith(got[1]);
    if (!isDeepStrictEqual(resumed, expected)) throw new Error(`resumed with ${JSON.stringify(resumed)}, expected ${JSON.stringify(expected)}`);
    if ((await page.getByRole("button", { name: "Submit rejection" }).count()) !== 0) throw new Error("the HITL view is still shown");
    return { sent: sent.at(-1), resumed };
  });

  await context.close();
}

// ---------------------------------------------------------------------------------------------
// The llm agent: testkit's model server follows rules one can type (`use NAME {json}` calls a
// tool, a tool's result is answered `the tool said: <result>`, anything else `echo: <text>`),
// its tools come from testkit's MCP server (`math`), and `add` needs an approval.

const LLM_CONTEXT = { model: "test-model", tools: ["math"], approve: ["add"] };

async function llmAssistant() {
  const created = await api("POST", "/assistants", { graph_id: "llm", name: "e2e llm", context: LLM_CONTEXT });
  if (!created?.assistant_id) throw new Error(`POST /assistants answered ${JSON.stringify(created)}`);
  return created.assistant_id;
}

// The conversation as the llm agent's messages show it: `h:` human, `a:` an AI message's text,
// `call:NAME {args}` each of its tool calls (messages/tool-calls.tsx's ToolCalls: a header
// with the name and the id, a row per argument), `tool:NAME: content` a tool message
// (ToolResult: "Tool Result: NAME", its tool_call_id, the content).
async function llmTranscript(page) {
  return page.evaluate(() => {
    const squash = (s) => (s ?? "").replace(/\s+/g, " ").trim();
    const out = [];
    for (const el of document.querySelectorAll("div.group.ml-auto, div.group.mr-auto")) {
      if (el.classList.contains("ml-auto")) {
        out.push("h:" + squash(el.querySelector("p.whitespace-pre-wrap")?.textContent));
        continue;
      }
      const header = el.querySelector("h3");
      if (header && squash(header.textContent).startsWith("Tool Result")) {
        const name = squash(header.querySelector("code")?.textContent);
        const content = squash(el.querySelector("div.p-3")?.innerText);
        out.push(`tool:${name}: ${content}`);
        continue;
      }
      const body = el.querySelector(":scope > div > div.py-1");
      if (body) out.push("a:" + squash(body.innerText));
      for (const card of el.querySelectorAll("div.rounded-lg.border")) {
        const h = card.querySelector(":scope > div > h3");
        if (!h) continue;
        const name = squash(h.firstChild?.textContent);
        const args = Object.fromEntries(
          [...card.querySelectorAll("tr")].map((tr) => [...tr.querySelectorAll("td")].map((td) => squash(td.textContent))),
        );
        out.push(`call:${name} ${JSON.stringify(args)}`);
      }
    }
    return out;
  });
}

function runsSent(since) {
  return network.filter((e) => e.t >= since && /\/runs\/stream$/.test(e.url)).map((e) => JSON.parse(e.body));
}

async function llmSteps(browser, base, assistantId) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 1000 } });
  const page = await context.newPage();
  page.setDefaultTimeout(30_000);
  recordNetwork(page);
  const fresh = () => page.goto(uiUrl(base, { assistantId }), { timeout: 120_000 });
  const threadOf = () => new URL(page.url()).searchParams.get("threadId");

  await step(page, "f1 llm streamed answer", async (since) => {
    await fresh();
    const text = "hello from the browser, streamed word by word";
    // Every text the AI message shows while it streams.
    await page.evaluate(() => {
      window.__seen = new Set();
      new MutationObserver(() => {
        const body = [...document.querySelectorAll("div.group.mr-auto > div > div.py-1")].at(-1);
        if (body) window.__seen.add(body.innerText.replace(/\s+/g, " ").trim());
      }).observe(document.body, { subtree: true, childList: true, characterData: true });
    });
    await send(page, text);
    await message(page, "a", "echo: hello").waitFor();
    await settled(page, since);
    const seen = await page.evaluate(() => [...window.__seen]);
    const events = await waitUntil("the stream's events", () => network.filter((e) => e.t >= since && /\/runs\/stream$/.test(e.url)).at(-1)?.events, 10_000);
    if (!(events.messages > 1)) throw new Error(`the answer was not streamed as messages-tuple chunks: events ${JSON.stringify(events)}`);
    const got = await llmTranscript(page);
    assertTranscript(got, [`h:${text}`, `a:echo: ${text}`]);
    const sent = runsSent(since).at(-1);
    if (sent.assistant_id !== assistantId) throw new Error(`the run was sent for ${sent.assistant_id}, not ${assistantId}`);
    const threadId = threadOf();
    const head = await headMessages(threadId);
    if (head.at(-1)?.content !== `echo: ${text}`) throw new Error(`the thread's last message ${JSON.stringify(head.at(-1))}`);
    return { threadId, streamMode: sent.stream_mode, events, textsShownWhileStreaming: seen };
  }, { record: llmTranscript });

  await step(page, "f2 llm tool call and result", async (since) => {
    await fresh();
    const text = 'use echo {"text":"hello tool"}';
    await send(page, text);
    await message(page, "a", "the tool said: hello tool").waitFor();
    await settled(page, since);
    const got = await llmTranscript(page);
    assertTranscript(got, [`h:${text}`, 'call:echo {"text":"hello tool"}', "tool:echo: hello tool", "a:the tool said: hello tool"]);
    const head = await headMessages(threadOf());
    const kinds = head.map((m) => m.type).join(",");
    if (kinds !== "human,ai,tool,ai") throw new Error(`the thread's messages are ${kinds}`);
    return { threadId: threadOf(), messages: head };
  }, { record: llmTranscript });

  for (const decision of ["approve", "reject"]) {
    const letter = decision === "approve" ? "f3" : "f4";
    const text = 'use add {"a":2,"b":3}';
    let threadId;
    const shown = await step(page, `${letter} llm approval asked (${decision})`, async (since) => {
      await fresh();
      await send(page, text);
      await page.getByText("Edit/Approve", { exact: true }).waitFor({ timeout: 60_000 });
      await settled(page, since);
      await page.getByRole("button", { name: "Submit rejection" }).waitFor();
      threadId = threadOf();
      const thread = await api("GET", `/threads/${threadId}`);
      if (thread.status !== "interrupted") throw new Error(`thread status ${thread.status}, expected interrupted`);
      const got = await llmTranscript(page);
      if (got[0] !== `h:${text}` || !got.includes('call:add {"a":"2","b":"3"}')) throw new Error(`transcript ${JSON.stringify(got)}`);
      return { threadId, interrupts: thread.interrupts };
    }, { record: llmTranscript });
    if (!shown) continue;

    await step(page, `${letter} llm ${decision}`, async (since) => {
      let answer;
      let expected;
      if (decision === "approve") {
        await page.getByRole("button", { name: "Approve", exact: true }).click();
        answer = "the tool said: 5";
        expected = { decisions: [{ type: "approve" }] };
      } else {
        await page.getByPlaceholder("Share feedback with the agent...").fill("not now");
        await page.getByRole("button", { name: "Submit rejection" }).click();
        // The answer is rendered as markdown: `add` shows as code, without its backticks.
        answer = "the tool said: User rejected the tool call for add with reason: not now";
        expected = { decisions: [{ type: "reject", message: "not now" }] };
      }
      await message(page, "a", answer).waitFor();
      await settled(page, since);
      const sent = runsSent(since).at(-1);
      if (!isDeepStrictEqual(sent?.command?.resume, expected)) throw new Error(`resumed with ${JSON.stringify(sent?.command)}, expected resume ${JSON.stringify(expected)}`);
      const thread = await api("GET", `/threads/${threadId}`);
      if (thread.status !== "idle") throw new Error(`thread status ${thread.status} after the resume`);
      if ((await page.getByRole("button", { name: "Submit rejection" }).count()) !== 0) throw new Error("the HITL view is still shown");
      const result = decision === "approve" ? "tool:add: 5" : "tool:add: User rejected the tool call for `add` with reason: not now";
      assertTranscript(await llmTranscript(page), [`h:${text}`, 'call:add {"a":"2","b":"3"}', result, `a:${answer}`]);
      return { sent: sent.command };
    }, { record: llmTranscript });
  }

  await context.close();
}

// ---------------------------------------------------------------------------------------------

async function main() {
  log(`output in ${OUT}`);
  log(`steps: ${ONLY.join(", ")}`);
  setupAgentChatUi();
  const bin = spindleBinary();
  const testkit = ONLY.includes("llm") ? await startTestkitServers(testkitServersBinary()) : undefined;
  SPINDLE = await startSpindle(bin, testkit);
  const assistantId = testkit ? await llmAssistant() : undefined;
  const base = await startNextDev(SPINDLE);

  if (!existsSync(CHROMIUM)) throw new Error(`no browser at ${CHROMIUM}: apt-get install chromium, or set CHROMIUM`);
  log(`chromium: ${CHROMIUM}`);
  const server = await chromium.launchServer({ executablePath: CHROMIUM, headless: !HEADED });
  const chromiumProcess = server.process();
  chromiumProcess.logFile = "(no log)";
  children.push({ name: "chromium", child: chromiumProcess });
  log(`started chromium (pid ${chromiumProcess.pid})`);
  try {
    const browser = await chromium.connect(server.wsEndpoint());
    if (ONLY.includes("conversation")) await conversation(browser, base);
    if (ONLY.includes("branches")) await olderBranch(browser, base);
    if (ONLY.includes("hitl")) for (const decision of ["approve", "reject", "edit", "resolve"]) await hitl(browser, base, decision);
    if (ONLY.includes("llm")) await llmSteps(browser, base, assistantId);
    await browser.close();
  } finally {
    await server.close().catch(() => {});
    log(`stopped chromium (pid ${chromiumProcess.pid})`);
  }

  writeFileSync(path.join(OUT, "network.jsonl"), network.map((e) => JSON.stringify(e)).join("\n") + "\n");
  writeFileSync(path.join(OUT, "report.json"), JSON.stringify({ spindle: SPINDLE, ui: base, assistant: ASSISTANT, llmAssistant: assistantId, testkit, results, consoleErrors }, null, 2));
  if (consoleErrors.length) appendFileSync(path.join(OUT, "console-errors.txt"), consoleErrors.map((e) => e.text).join("\n") + "\n");

  const failed = results.filter((r) => !r.ok);
  console.log("");
  for (const r of results) console.log(`${r.ok ? "PASS" : "FAIL"}  ${r.name}${r.ok ? "" : "  — " + r.error}`);
  console.log(`\n${results.length - failed.length}/${results.length} passed; screenshots, network.jsonl, logs and report.json in ${OUT}`);
  return failed.length ? 1 : 0;
}

main()
  .then((code) => {
    stopAll();
    process.exit(code);
  })
  .catch((e) => {
    console.error(e);
    stopAll();
    process.exit(2);
  });
