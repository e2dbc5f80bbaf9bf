// Stops the cluster of global-setup.js (`nginx/cluster.sh down`: nginx, replicas, Redis, and the
// database is dropped), keeps its logs under artifacts/cluster-logs/ and removes the run directory.
const fs = require('node:fs');
const path = require('node:path');
const { cluster } = require('./global-setup');

async function globalTeardown() {
  const runDir = process.env.E2E_CLUSTER_DIR;
  if (!runDir || !fs.existsSync(runDir)) return;
  const started = Date.now();
  try {
    cluster(runDir, ['down'], { timeout: 120_000 });
    const secs = ((Date.now() - started) / 1000).toFixed(1);
    process.stderr.write(`[cluster] stopped in ${secs} s (nginx, replicas, Redis; database dropped); logs in e2e/artifacts/cluster-logs/\n`);
  } catch (e) {
    process.stderr.write(`[cluster] down failed: ${e.message}\n`);
  }
  const logs = path.join(__dirname, 'artifacts', 'cluster-logs');
  fs.rmSync(logs, { recursive: true, force: true });
  fs.mkdirSync(logs, { recursive: true });
  for (const f of fs.readdirSync(runDir)) {
    if (f.endsWith('.log')) fs.copyFileSync(path.join(runDir, f), path.join(logs, f));
  }
  const nginxErr = path.join(runDir, 'nginx', 'error.log');
  if (fs.existsSync(nginxErr)) fs.copyFileSync(nginxErr, path.join(logs, 'nginx-error.log'));
  fs.rmSync(runDir, { recursive: true, force: true });
}

module.exports = globalTeardown;
