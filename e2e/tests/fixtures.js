// Shared fixtures and helpers: users act through the page by role and label, as a person would.
const fs = require('node:fs');
const path = require('node:path');
const { execFileSync } = require('node:child_process');
const base = require('@playwright/test');

const { expect } = base;

/** Base URL of nginx in front of the replicas (set by global-setup.js). */
function baseURL() {
  const url = process.env.E2E_BASE_URL;
  if (!url) throw new Error('E2E_BASE_URL is not set: run through `npx playwright test` (global-setup.js)');
  return url;
}

// Unique per run (and per process), so names never collide with another run's users.
const RUN = `${Date.now().toString(36).slice(-5)}${Math.random().toString(36).slice(2, 5)}`;
let counter = 0;
/** A fresh user or group name, e.g. `alice-lq3x9ab1`. */
const uniqueName = (prefix) => `${prefix}-${RUN}${(++counter).toString(36)}`;
const PASSWORD = `pw-${RUN}`;

const ARTIFACTS = path.join(__dirname, '..', 'artifacts', 'screenshots');

const escapeRe = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

const test = base.test.extend({
  /**
   * `openApp(opts)`: a new browser context (a separate "device": own cookies, storage, socket)
   * with the page loaded. Page errors are collected and must stay empty.
   */
  openApp: async ({ browser }, use) => {
    const contexts = [];
    const pages = [];
    await use(async ({ viewport = { width: 1280, height: 800 }, colorScheme = 'light' } = {}) => {
      const context = await browser.newContext({ viewport, colorScheme });
      contexts.push(context);
      const page = await context.newPage();
      page.pageErrors = [];
      page.on('pageerror', (e) => page.pageErrors.push(String(e)));
      pages.push(page);
      await page.goto(`${baseURL()}/`);
      await expect(page.getByRole('button', { name: 'Log in', exact: true })).toBeVisible();
      return page;
    });
    const errors = pages.flatMap((p) => p.pageErrors);
    for (const c of contexts) await c.close().catch(() => {});
    expect(errors, 'uncaught errors in the page').toEqual([]);
  },

  /** `shot(page, name)`: a full-page screenshot kept as a test artifact (and in artifacts/). */
  shot: async ({}, use, testInfo) => {
    await use(async (page, name) => {
      fs.mkdirSync(ARTIFACTS, { recursive: true });
      const file = path.join(ARTIFACTS, `${name}.png`);
      const body = await page.screenshot({ path: file, fullPage: true, animations: 'disabled' });
      await testInfo.attach(name, { body, contentType: 'image/png' });
    });
  },
});

// ── actions ──

async function fillCredentials(page, nameOrId, password) {
  await page.getByLabel('Name or id', { exact: true }).fill(String(nameOrId));
  await page.getByLabel('Password', { exact: true }).fill(password);
}

/** Registers through the form; returns the id the page shows. */
async function register(page, name, password = PASSWORD) {
  await fillCredentials(page, name, password);
  await page.getByRole('button', { name: 'Register', exact: true }).click();
  await expect(page.getByTestId('my-name')).toHaveText(name);
  await expect(page.getByTestId('my-id')).toHaveText(/^\d+$/);
  await expect(page.getByTestId('node')).toHaveText(/\S/);
  return Number(await page.getByTestId('my-id').textContent());
}

async function login(page, nameOrId, password = PASSWORD) {
  await fillCredentials(page, nameOrId, password);
  await page.getByRole('button', { name: 'Log in', exact: true }).click();
  await expect(page.getByTestId('my-id')).toHaveText(/^\d+$/);
}

async function logout(page) {
  await page.getByRole('button', { name: 'Log out', exact: true }).click();
  await expect(page.getByRole('button', { name: 'Log in', exact: true })).toBeVisible();
}

/** The replica this page is connected to, as the page shows it. */
const nodeOf = async (page) => (await page.getByTestId('node').textContent()).trim();

/** The sidebar's conversation list. */
const conversations = (page) => page.getByRole('list', { name: 'Conversations' });

/**
 * The list item of a friend or group. Its accessible name is "<name>, online, 2 unread" for a
 * friend and "<name> (group), 3 unread" for a group.
 */
const conversationItem = (page, name, { group = false } = {}) => conversations(page)
  .getByRole('listitem', { name: new RegExp(`^${escapeRe(name)}${group ? ' \\(group\\)' : ''}(,|$)`) });

async function openConversation(page, name, opts) {
  await conversationItem(page, name, opts).click();
  await expect(page.getByTestId('conversation-title')).toHaveText(name);
}

async function addFriend(page, id, name) {
  await page.getByLabel('Friend id', { exact: true }).fill(String(id));
  await page.getByRole('button', { name: 'Add friend', exact: true }).click();
  await expect(conversationItem(page, name)).toBeVisible();
}

/** Types a message and presses Enter (the composer sends on Enter). */
async function send(page, text) {
  const box = page.getByLabel('Message', { exact: true });
  await box.fill(text);
  await box.press('Enter');
  await expect(box).toHaveValue('');
}

/** The message log of the open conversation. */
const messageLog = (page) => page.getByRole('log', { name: 'Messages' });

/** Texts of the messages in the log, in order (pending sends included). */
const messageTexts = (page) => messageLog(page).locator('.msg .text').allTextContents();

/** Waits until every send of the page is acknowledged (nothing pending or failed). */
async function expectAllSent(page) {
  await expect(messageLog(page).locator('.msg[data-state="pending"], .msg[data-state="failed"]')).toHaveCount(0);
}

/** Status region (connection state, errors and notices in plain words). */
const statusRegion = (page) => page.getByRole('status');

// ── the wire protocol, spoken from a page (no Node WebSocket needed) ──

/**
 * Runs `script` in the page with `proto`: `await proto.connect()` gives a session with
 * `req(msgid, fields)` (resolves with the reply, throws on errno ≠ 0) and `close()`. The socket is
 * a raw one to /ws of the page's own origin (nginx), independent of the page's app.
 */
async function withProtocol(page, script, arg) {
  return page.evaluate(async ({ source, arg: a }) => {
    const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
    const proto = {
      connect: () => new Promise((resolve, reject) => {
        const ws = new WebSocket(url);
        const waiting = new Map();
        let next = 1;
        ws.onmessage = (ev) => {
          const f = JSON.parse(ev.data);
          const w = waiting.get(f.reqid);
          if (!w) return;
          waiting.delete(f.reqid);
          if (f.errno) w.reject(new Error(`msgid ${f.msgid} errno ${f.errno}: ${f.errmsg}`));
          else w.resolve(f);
        };
        ws.onerror = () => reject(new Error('WebSocket error'));
        ws.onopen = () => resolve({
          req: (msgid, fields = {}) => new Promise((res, rej) => {
            const reqid = next++;
            waiting.set(reqid, { resolve: res, reject: rej });
            ws.send(JSON.stringify({ ...fields, msgid, reqid }));
          }),
          close: () => ws.close(),
        });
      }),
    };
    // eslint-disable-next-line no-new-func
    const fn = new Function('proto', 'arg', `return (${source})(proto, arg);`);
    return fn(proto, a);
  }, { source: script.toString(), arg });
}

// ── cluster control ──

function clusterSh(...args) {
  const runDir = process.env.E2E_CLUSTER_DIR;
  if (!runDir) throw new Error('E2E_CLUSTER_DIR is not set');
  return execFileSync(path.join(__dirname, '..', '..', 'nginx', 'cluster.sh'), args, {
    env: { ...process.env, CHAT_CLUSTER_DIR: runDir, PATH: `${process.env.PATH}:/usr/sbin:/sbin` },
    encoding: 'utf8',
    timeout: 60_000,
  });
}

module.exports = {
  test, expect, baseURL, uniqueName, PASSWORD, RUN,
  register, login, logout, nodeOf, conversations, conversationItem, openConversation, addFriend,
  send, messageLog, messageTexts, expectAllSent, statusRegion, clusterSh, escapeRe, withProtocol,
};
