// A group of three: one creates it, two join it by id, all three chat; every page shows every
// message once, in the same order, with the sender's name; the members panel lists all three.
const {
  test, expect, uniqueName, register, conversationItem, openConversation, send, messageLog,
  messageTexts, expectAllSent,
} = require('./fixtures');

test('a group of three chats', async ({ openApp, shot }) => {
  const names = [uniqueName('ann'), uniqueName('ben'), uniqueName('cat')];
  const pages = [];
  for (const name of names) {
    const page = await openApp();
    await register(page, name);
    pages.push(page);
  }
  const [ann, ben, cat] = pages;
  const groupName = uniqueName('Ops team');

  // Ann creates the group; it opens, and shows its id.
  await ann.getByLabel('Group name', { exact: true }).fill(groupName);
  await ann.getByLabel('Group description', { exact: true }).fill('On-call and deploys');
  await ann.getByRole('button', { name: 'Create group', exact: true }).click();
  await expect(ann.getByTestId('conversation-title')).toHaveText(groupName);
  await expect(ann.getByTestId('conversation-id')).toHaveText(/^Group id \d+$/);
  const groupId = (await ann.getByTestId('conversation-id').textContent()).replace(/\D/g, '');
  await expect(conversationItem(ann, groupName, { group: true })).toBeVisible();

  // Ben and Cat join by id.
  for (const page of [ben, cat]) {
    await page.getByLabel('Group id', { exact: true }).fill(groupId);
    await page.getByRole('button', { name: 'Join group', exact: true }).click();
    await expect(page.getByTestId('conversation-title')).toHaveText(groupName);
    await expect(conversationItem(page, groupName, { group: true })).toBeVisible();
  }

  // Each one writes in turn (waiting for the ack, so the order is fixed); all see all, live.
  const lines = [
    [ann, 'Welcome to the ops group 👋'],
    [ben, 'Thanks! I will watch the metrics.'],
    [cat, 'Deploy at 15:00, ok?'],
    [ann, 'Ok for me.'],
  ];
  for (const [page, text] of lines) {
    await send(page, text);
    await expectAllSent(page);
  }
  const expected = lines.map(([, text]) => text);
  for (const page of pages) await expect.poll(() => messageTexts(page)).toEqual(expected);

  // The open group is read on every page: nothing is left unread.
  for (const page of pages) {
    await expect(conversationItem(page, groupName, { group: true })).toHaveAccessibleName(`${groupName} (group)`);
  }

  // Messages of others carry the sender's name.
  const fromCat = messageLog(ann).locator('.msg', { hasText: 'Deploy at 15:00, ok?' });
  await expect(fromCat.getByText(names[2], { exact: true })).toBeVisible();
  const fromBen = messageLog(cat).locator('.msg', { hasText: 'Thanks! I will watch the metrics.' });
  await expect(fromBen.getByText(names[1], { exact: true })).toBeVisible();

  // Members: all three, the creator marked as such.
  await ann.getByRole('button', { name: 'Members', exact: true }).click();
  const members = ann.getByRole('table', { name: `Members of ${groupName}` });
  await expect(members).toBeVisible();
  for (const name of names) await expect(members.getByRole('row', { name: new RegExp(name) })).toBeVisible();
  await expect(members.getByRole('row', { name: new RegExp(`${names[0]}.*creator`) })).toBeVisible();
  await shot(ann, 'group');
  await ann.getByRole('button', { name: 'Members', exact: true }).click();
  await expect(members).toBeHidden();

  // Cat quits: the group leaves her list; the others keep chatting without her.
  await cat.getByRole('button', { name: 'Quit group', exact: true }).click();
  await expect(conversationItem(cat, groupName, { group: true })).toHaveCount(0);
  await send(ben, 'Bye Cat!');
  await expect(messageLog(ann).getByText('Bye Cat!', { exact: true })).toBeVisible();
});
