// Scroll-back: a conversation of 120 messages (sent through the protocol) opens with the newest
// 50; scrolling to the top loads the older ones page by page (HISTORY), in order, none twice.
const {
  test, expect, uniqueName, PASSWORD, login, openConversation, messageLog, messageTexts,
  withProtocol,
} = require('./fixtures');

const TOTAL = 120;
const label = (i) => `history ${String(i).padStart(3, '0')}`;

test('scrolling up loads older messages', async ({ openApp, shot }) => {
  const xName = uniqueName('xavier');
  const yName = uniqueName('yvonne');
  const page = await openApp();

  // Two users chat through raw protocol sockets: odd messages from X, even ones from Y, each
  // acknowledged before the next, then Y marks everything read (READ_MSG).
  const result = await withProtocol(page, async (proto, { xName, yName, password, total }) => {
    const x = await proto.connect();
    const y = await proto.connect();
    const xId = (await x.req(4, { name: xName, password })).id;
    const yId = (await y.req(4, { name: yName, password })).id;
    await x.req(1, { id: xId, password });
    await y.req(1, { id: yId, password });
    await x.req(7, { friendid: yId });
    let last = 0;
    for (let i = 1; i <= total; i++) {
      const msg = `history ${String(i).padStart(3, '0')}`;
      const ack = i % 2 ? await x.req(6, { toid: yId, msg }) : await y.req(6, { toid: xId, msg });
      last = ack.seq;
    }
    await y.req(18, { toid: xId, seq: last });
    x.close();
    y.close();
    return { xId, yId, last };
  }, { xName, yName, password: PASSWORD, total: TOTAL });
  expect(result.last).toBe(TOTAL);

  // Y opens the conversation in the page: the newest 50.
  await login(page, yName);
  await openConversation(page, xName);
  const log = messageLog(page);
  const messages = log.locator('.msg');
  await expect(messages).toHaveCount(50);
  await expect(log.getByText(label(TOTAL), { exact: true })).toBeVisible();
  await expect(log.getByText('Scroll up for earlier messages')).toBeAttached();
  expect(await messageTexts(page)).toEqual(Array.from({ length: 50 }, (_, i) => label(TOTAL - 49 + i)));

  // Scroll to the top (mouse wheel over the log): an older page (50) comes in above; scrolling to
  // the top again brings the rest (a fast fling may fetch both pages in one go).
  const countAfterScrollingUp = async (atLeast) => {
    let count = 0;
    await expect(async () => {
      await log.hover();
      await page.mouse.wheel(0, -20_000);
      await expect.poll(async () => (count = await messages.count()), { timeout: 1_500 }).toBeGreaterThanOrEqual(atLeast);
    }).toPass({ timeout: 20_000 });
    return count;
  };
  expect([100, TOTAL]).toContain(await countAfterScrollingUp(100));
  await expect(log.getByText(label(TOTAL - 99), { exact: true })).toBeAttached();
  expect(await countAfterScrollingUp(TOTAL)).toBe(TOTAL);
  await expect(log.getByText(`This is the beginning of your conversation with ${xName}.`)).toBeVisible();
  await expect(log.getByText(label(1), { exact: true })).toBeVisible();
  await shot(page, 'history-top');

  // All 120, ascending, none twice; the view stayed where the reader was (not thrown to the end).
  expect(await messageTexts(page)).toEqual(Array.from({ length: TOTAL }, (_, i) => label(i + 1)));
  await expect(log.getByText(label(TOTAL), { exact: true })).not.toBeInViewport();
  // Y's own messages (the even ones) are marked as hers.
  await expect(log.locator('.msg.mine')).toHaveCount(TOTAL / 2);
  await expect(log.locator('.msg.mine').first()).toContainText(label(2));
});
