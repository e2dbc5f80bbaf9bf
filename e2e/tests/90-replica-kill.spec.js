// One replica is killed (SIGKILL, `nginx/cluster.sh kill I`) in the middle of a conversation
// between two users whose pages are both on it: both pages show that they are reconnecting, log
// back in on the surviving replica by themselves, resend what was not acknowledged, and in the
// end both logs hold every message exactly once, in the same order, as the server does.
//
// This file runs last (files run in name order with one worker): the cluster keeps one replica.
const {
  test, expect, uniqueName, register, login, nodeOf, addFriend, conversationItem,
  openConversation, send, messageLog, messageTexts, expectAllSent, statusRegion, clusterSh,
} = require('./fixtures');

/** Records every text the status region and the replica badge show from now on. */
async function recordStatus(page) {
  await statusRegion(page).evaluate((status) => {
    const node = document.querySelector('[data-testid="node"]');
    window.e2eSeen = [];
    const record = () => window.e2eSeen.push({ status: status.textContent.trim(), node: node.textContent.trim() });
    const observer = new MutationObserver(record);
    observer.observe(status, { subtree: true, childList: true, characterData: true, attributes: true });
    observer.observe(node, { subtree: true, childList: true, characterData: true });
  });
}
const seen = (page) => page.evaluate(() => window.e2eSeen);

test('a replica killed mid-conversation: both pages reconnect, nothing lost or doubled', async ({ openApp, shot }) => {
  // Three users, one page each: least_conn spreads them over the two replicas, so two of them
  // share one (pigeonhole). Those two hold the conversation; the third stays on the other one.
  const users = [];
  for (const prefix of ['kim', 'lou', 'max']) {
    const name = uniqueName(prefix);
    const page = await openApp();
    const id = await register(page, name);
    users.push({ name, id, page, node: await nodeOf(page) });
  }
  const nodes = new Set(users.map((u) => u.node));
  expect(nodes.size, `two replicas serve the pages (${[...nodes].join(', ')})`).toBe(2);
  let pair;
  for (let i = 0; i < 3 && !pair; i++) {
    for (let j = i + 1; j < 3 && !pair; j++) if (users[i].node === users[j].node) pair = [users[i], users[j]];
  }
  const [p, q] = pair;
  const bystander = users.find((u) => u !== p && u !== q);
  const doomed = p.node;
  const survivor = bystander.node;
  expect(survivor).not.toBe(doomed);

  // The conversation starts.
  await addFriend(p.page, q.id, q.name);
  await openConversation(p.page, q.name);
  await send(p.page, 'before the crash (p)');
  await expect(conversationItem(q.page, p.name)).toBeVisible();
  await openConversation(q.page, p.name);
  await send(q.page, 'before the crash (q)');
  await expect(messageLog(p.page).getByText('before the crash (q)', { exact: true })).toBeVisible();
  await expect(messageLog(q.page).getByText('before the crash (p)', { exact: true })).toBeVisible();
  for (const u of users) await recordStatus(u.page);

  // Mid-conversation: both keep typing; after the third message each, the replica dies; they go
  // on typing while their pages reconnect (those messages wait, pending, and go out afterwards).
  const sent = ['before the crash (p)', 'before the crash (q)'];
  const killAfter = 3;
  const rounds = 8;
  for (let i = 1; i <= rounds; i++) {
    await send(p.page, `p says ${i}`);
    await send(q.page, `q says ${i}`);
    sent.push(`p says ${i}`, `q says ${i}`);
    if (i === killAfter) {
      const out = clusterSh('kill', doomed.replace(/^replica-/, ''));
      expect(out).toContain('killed');
    }
  }

  // Both pages are logged back in, on the surviving replica, with nothing left to send.
  for (const u of [p, q]) {
    await expect(u.page.getByTestId('node')).toHaveText(survivor, { timeout: 30_000 });
    await expect(statusRegion(u.page)).not.toContainText('Reconnecting');
    await expectAllSent(u.page);
  }
  // …and both said so while it happened.
  for (const u of [p, q]) {
    const history = await seen(u.page);
    expect(history.some((s) => s.status.includes('Reconnecting')), `${u.name} showed “Reconnecting…”`).toBe(true);
  }
  // The third page, on the surviving replica, never lost its connection.
  expect((await seen(bystander.page)).some((s) => s.status.includes('Reconnecting'))).toBe(false);
  await expect(bystander.page.getByTestId('node')).toHaveText(survivor);

  // Every message exactly once on both pages, in the same order.
  const sorted = [...sent].sort();
  for (const u of [p, q]) await expect.poll(async () => (await messageTexts(u.page)).sort(), { timeout: 20_000 }).toEqual(sorted);
  await p.page.waitForTimeout(1_500); // late duplicates would show up now
  const logP = await messageTexts(p.page);
  const logQ = await messageTexts(q.page);
  expect([...logP].sort()).toEqual(sorted);
  expect(logQ).toEqual(logP);
  // Each sender's own messages kept their order.
  for (const who of ['p', 'q']) {
    const mine = logP.filter((t) => t.startsWith(`${who} says `));
    expect(mine).toEqual(Array.from({ length: rounds }, (_, i) => `${who} says ${i + 1}`));
  }
  await shot(p.page, 'after-replica-kill');

  // What the server stored is the same: a fresh login (the page forgets its session on reload)
  // loads the conversation from history.
  await p.page.reload();
  await login(p.page, p.name);
  await expect(p.page.getByTestId('node')).toHaveText(survivor);
  await openConversation(p.page, q.name);
  await expect.poll(() => messageTexts(p.page)).toEqual(logP);

  // And the conversation goes on, live.
  await send(q.page, 'still here');
  await expect(messageLog(p.page).getByText('still here', { exact: true })).toBeVisible();
});
