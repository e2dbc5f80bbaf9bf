// Messages sent while the recipient is logged out are there, unread, when they log in; reading
// them sends READ, so the next login does not offer them again.
const {
  test, expect, uniqueName, register, login, logout, addFriend, conversationItem,
  openConversation, send, messageLog, messageTexts, expectAllSent,
} = require('./fixtures');

test('offline messages appear unread at login', async ({ openApp, shot }) => {
  const aliceName = uniqueName('alice');
  const bobName = uniqueName('bob');
  const alice = await openApp();
  await register(alice, aliceName);
  const bob = await openApp();
  const bobId = await register(bob, bobName);

  await addFriend(alice, bobId, bobName);
  await logout(bob);
  await expect(conversationItem(alice, bobName)).toHaveAccessibleName(`${bobName}, offline`);

  await openConversation(alice, bobName);
  const offline = ['Are you there?', 'Call me when you are back', 'It is about the release 🚀'];
  for (const text of offline) await send(alice, text);
  await expectAllSent(alice);

  // Bob logs in (by id this time): the three are unread, counted in the list and the title.
  await login(bob, bobId);
  const item = conversationItem(bob, aliceName);
  await expect(item).toHaveAccessibleName(`${aliceName}, online, 3 unread`);
  await expect(item.getByTestId('unread-count')).toHaveText('3');
  await expect(bob).toHaveTitle('(3) clusterchat');
  await expect(conversationItem(alice, bobName)).toHaveAccessibleName(`${bobName}, online`);
  await shot(bob, 'offline-unread');

  // Opening the conversation shows them and reads them.
  await openConversation(bob, aliceName);
  await expect.poll(() => messageTexts(bob)).toEqual(offline);
  await expect(item).toHaveAccessibleName(`${aliceName}, online`);
  await expect(bob).toHaveTitle('clusterchat');

  // Read on the server too: logging in again (by name) shows no unread message.
  await logout(bob);
  await login(bob, bobName);
  await expect(conversationItem(bob, aliceName)).toHaveAccessibleName(`${aliceName}, online`);
  await expect(conversationItem(bob, aliceName).getByTestId('unread-count')).toHaveCount(0);
  await openConversation(bob, aliceName);
  await expect.poll(() => messageTexts(bob)).toEqual(offline);
  await expect(messageLog(bob).locator('.msg.mine')).toHaveCount(0);
});
