// Bad input gets a readable sentence in the status region (role=status), never a raw errno or
// JSON, and nothing is sent or changed.
const {
  test, expect, uniqueName, register, addFriend, openConversation, conversations, messageLog,
  statusRegion,
} = require('./fixtures');

/** The status region says `text`, in plain words. */
async function expectStatus(page, text) {
  const status = statusRegion(page);
  await expect(status).toContainText(text);
  await expect(status).not.toContainText(/errno|\{|\}|undefined|null|NaN/);
}

test('bad input shows a readable error', async ({ openApp, shot }) => {
  const aliceName = uniqueName('alice');
  const bobName = uniqueName('bob');
  const alice = await openApp();

  // Signing in with nothing, or with a user that does not exist.
  await alice.getByRole('button', { name: 'Log in', exact: true }).click();
  await expectStatus(alice, 'Enter your name or id');
  await alice.getByLabel('Name or id', { exact: true }).fill(uniqueName('nobody'));
  await alice.getByLabel('Password', { exact: true }).fill('wrong');
  await alice.getByRole('button', { name: 'Log in', exact: true }).click();
  await expectStatus(alice, 'Wrong name, id or password');
  await shot(alice, 'error-login');

  const aliceId = await register(alice, aliceName);
  const bob = await openApp();
  // A taken name.
  await bob.getByLabel('Name or id', { exact: true }).fill(aliceName);
  await bob.getByLabel('Password', { exact: true }).fill('another password');
  await bob.getByRole('button', { name: 'Register', exact: true }).click();
  await expectStatus(bob, 'That name is already taken');
  const bobId = await register(bob, bobName);

  // Friend ids: unknown, not a number, oneself. The list does not change.
  const friendId = alice.getByLabel('Friend id', { exact: true });
  const addFriendButton = alice.getByRole('button', { name: 'Add friend', exact: true });
  await friendId.fill(String(bobId + 100_000));
  await addFriendButton.click();
  await expectStatus(alice, 'No such user');
  await friendId.fill('bob');
  await addFriendButton.click();
  await expectStatus(alice, 'Friend id must be a number');
  await friendId.fill(String(aliceId));
  await addFriendButton.click();
  await expectStatus(alice, 'You can’t add yourself as a friend');
  await expect(conversations(alice).getByRole('listitem')).toHaveCount(0);

  // Unknown group id.
  await alice.getByLabel('Group id', { exact: true }).fill('987654321');
  await alice.getByRole('button', { name: 'Join group', exact: true }).click();
  await expectStatus(alice, 'No such group');

  // An empty (or blank) message is not sent.
  await addFriend(alice, bobId, bobName);
  await openConversation(alice, bobName);
  await alice.getByRole('button', { name: 'Send', exact: true }).click();
  await expectStatus(alice, 'Message is empty');
  await alice.getByRole('button', { name: 'Dismiss', exact: true }).click();
  await expect(statusRegion(alice)).not.toContainText('Message is empty');
  await alice.getByLabel('Message', { exact: true }).fill('   \n  ');
  await alice.getByLabel('Message', { exact: true }).press('Enter');
  await expectStatus(alice, 'Message is empty');
  await expect(messageLog(alice).locator('.msg')).toHaveCount(0);
  await expect(messageLog(alice)).toContainText('No messages yet');
  await shot(alice, 'error');

  // Too long a message (more than 4,000 characters) is refused before sending.
  await alice.getByLabel('Message', { exact: true }).fill('x'.repeat(4001));
  await alice.getByRole('button', { name: 'Send', exact: true }).click();
  await expectStatus(alice, 'Message is too long: at most 4,000 characters');
  await expect(messageLog(alice).locator('.msg')).toHaveCount(0);
});
