// Two users in two browser contexts register, befriend each other and chat both ways live, each
// on another replica behind nginx (least_conn spreads the two sockets over the two replicas).
const {
  test, expect, uniqueName, register, nodeOf, addFriend, conversationItem, openConversation,
  send, messageLog, messageTexts, expectAllSent,
} = require('./fixtures');

test('two users on different replicas befriend and chat both ways live', async ({ openApp, shot }) => {
  const aliceName = uniqueName('alice');
  const bobName = uniqueName('bob');

  const alice = await openApp();
  await shot(alice, 'login');
  const aliceId = await register(alice, aliceName);
  const bob = await openApp();
  const bobId = await register(bob, bobName);
  expect(aliceId).not.toBe(bobId);

  // Each page says which replica it is on; nginx put the two users on different ones.
  const aliceNode = await nodeOf(alice);
  const bobNode = await nodeOf(bob);
  expect(aliceNode).toMatch(/^replica-\d+$/);
  expect(bobNode).toMatch(/^replica-\d+$/);
  expect(aliceNode, 'the two pages are on different replicas').not.toBe(bobNode);

  // Alice adds Bob by id and sees him online (presence crosses replicas through Redis).
  await addFriend(alice, bobId, bobName);
  await expect(conversationItem(alice, bobName)).toHaveAccessibleName(/, online/);
  await openConversation(alice, bobName);

  // Alice → Bob, live: Alice appears in Bob's list with one unread message (no reload).
  const first = 'Hi Bob, this is Alice on ' + aliceNode;
  await send(alice, first);
  await expect(conversationItem(bob, aliceName)).toHaveAccessibleName(`${aliceName}, online, 1 unread`);
  await openConversation(bob, aliceName);
  await expect(messageLog(bob).getByText(first, { exact: true })).toBeVisible();
  // Opening the conversation reads it.
  await expect(conversationItem(bob, aliceName)).toHaveAccessibleName(`${aliceName}, online`);

  // Bob → Alice, live.
  await send(bob, 'Hello Alice! Bob here, on ' + bobNode);
  await expect(messageLog(alice).getByText('Hello Alice! Bob here, on ' + bobNode, { exact: true })).toBeVisible();

  // A multi-line message (Shift+Enter makes a newline, Enter sends).
  const box = alice.getByLabel('Message', { exact: true });
  await box.fill('line one');
  await box.press('Shift+Enter');
  await box.pressSequentially('line two');
  await expect(box).toHaveValue('line one\nline two');
  await box.press('Enter');
  await expect(box).toHaveValue('');

  // A quick exchange: every message arrives once, in the same order on both pages.
  for (let i = 1; i <= 3; i++) {
    await send(alice, `ping ${i}`);
    await send(bob, `pong ${i}`);
  }
  const expected = [
    'Hi Bob, this is Alice on ' + aliceNode,
    'Hello Alice! Bob here, on ' + bobNode,
    'line one\nline two',
    'ping 1', 'pong 1', 'ping 2', 'pong 2', 'ping 3', 'pong 3',
  ];
  await expectAllSent(alice);
  await expectAllSent(bob);
  await expect.poll(() => messageTexts(bob)).toEqual(expected);
  await expect.poll(() => messageTexts(alice)).toEqual(expected);

  // Each side shows who wrote what: own messages are marked as mine.
  await expect(messageLog(alice).locator('.msg.mine')).toHaveCount(5);
  await expect(messageLog(bob).locator('.msg.mine')).toHaveCount(4);
  // Reading the open conversation leaves nothing unread.
  await expect(conversationItem(alice, bobName)).not.toHaveAccessibleName(/unread/);
  await expect(conversationItem(bob, aliceName)).not.toHaveAccessibleName(/unread/);

  await shot(alice, 'chat');
  await shot(bob, 'chat-other-side');
});
