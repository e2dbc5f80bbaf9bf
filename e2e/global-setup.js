// Starts a private cluster for this test run: `nginx/cluster.sh up 2 --port <free port>` with
// CHAT_CLUSTER_DIR set to a fresh temporary directory, so that it never touches another cluster.
// The base URL and the run directory reach the tests through process.env (Playwright passes the
// environment of the global setup on to its workers) and through <run dir>/e2e.json.
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');

const repo = path.resolve(__dirname, '..');
const clusterSh = path.join(repo, 'nginx', 'cluster.sh');

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function clusterEnv(runDir) {
  const env = { ...process.env, CHAT_CLUSTER_DIR: runDir };
  env.PATH = `${env.PATH || ''}:/usr/sbin:/sbin`;
  const debugBin = path.join(repo, 'target', 'debug', 'chat-server');
  if (!env.CHAT_BIN && fs.existsSync(debugBin)) env.CHAT_BIN = debugBin; // else cluster.sh builds
  return env;
}

/** Runs cluster.sh with the given arguments; its output goes to our stderr. */
function cluster(runDir, args, opts = {}) {
  return execFileSync(clusterSh, args, {
    env: clusterEnv(runDir),
    cwd: repo,
    stdio: ['ignore', 'pipe', 'inherit'],
    encoding: 'utf8',
    timeout: opts.timeout ?? 10 * 60_000,
  });
}

async function globalSetup() {
  const runDir = fs.mkdtempSync(path.join(os.tmpdir(), 'clusterchat-e2e-'));
  const port = await freePort();
  const baseURL = `http://127.0.0.1:${port}`;
  process.env.E2E_CLUSTER_DIR = runDir;
  process.env.E2E_BASE_URL = baseURL;
  const started = Date.now();
  try {
    const out = cluster(runDir, ['up', '2', '--port', String(port)]);
    process.stderr.write(`${out.trimEnd().replace(/^/gm, '[cluster] ')}\n`);
  } catch (e) {
    // cluster.sh stops what it started when `up` fails; make sure, then fail the run.
    try { cluster(runDir, ['down'], { timeout: 60_000 }); } catch { /* nothing more to do */ }
    throw new Error(`nginx/cluster.sh up failed (logs in ${runDir}): ${e.message}`);
  }
  fs.writeFileSync(path.join(runDir, 'e2e.json'), JSON.stringify({ baseURL, runDir, port }, null, 2));
  process.stderr.write(`[cluster] up in ${((Date.now() - started) / 1000).toFixed(1)} s: ${baseURL} (run dir ${runDir})\n`);
}

module.exports = globalSetup;
module.exports.cluster = cluster;
module.exports.repo = repo;
