// A phone-sized window: one pane at a time (the list, or the open conversation with a Back
// button), nothing wider than the screen; in the light and the dark scheme.
const {
  test, expect, uniqueName, register, addFriend, conversationItem, openConversation, conversations,
  send, messageLog,
} = require('./fixtures');

const PHONE = { width: 390, height: 844 };

const noHorizontalOverflow = (page) => page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth);

for (const colorScheme of ['light', 'dark']) {
  test(`phone-sized window (${colorScheme})`, async ({ openApp, shot }) => {
    const meName = uniqueName('mia');
    const friendName = uniqueName('noah');
    const friend = await openApp();
    const friendId = await register(friend, friendName);

    const phone = await openApp({ viewport: PHONE, colorScheme });
    await expect(phone.getByRole('button', { name: 'Register', exact: true })).toBeInViewport();
    expect(await noHorizontalOverflow(phone)).toBe(true);
    await shot(phone, `phone-login-${colorScheme}`);
    await register(phone, meName);

    await addFriend(phone, friendId, friendName);
    await expect(conversations(phone)).toBeVisible();
    await expect(phone.getByRole('button', { name: 'Back to conversations' })).toBeHidden();
    expect(await noHorizontalOverflow(phone)).toBe(true);
    await shot(phone, `phone-list-${colorScheme}`);

    // Opening a conversation replaces the list; Back returns to it.
    await openConversation(phone, friendName);
    await expect(conversations(phone)).toBeHidden();
    await expect(phone.getByRole('button', { name: 'Back to conversations' })).toBeVisible();
    await send(phone, 'Sent from my phone 📱');
    await openConversation(friend, meName);
    await send(friend, 'Got it, replying from the laptop. A longer line, to see that it wraps nicely on a narrow screen.');
    await expect(messageLog(phone).getByText('Got it, replying from the laptop.', { exact: false })).toBeVisible();
    await expect(phone.getByLabel('Message', { exact: true })).toBeInViewport();
    await expect(phone.getByRole('button', { name: 'Send', exact: true })).toBeInViewport();
    expect(await noHorizontalOverflow(phone)).toBe(true);
    await shot(phone, `phone-chat-${colorScheme}`);

    await phone.getByRole('button', { name: 'Back to conversations' }).click();
    await expect(conversations(phone)).toBeVisible();
    await expect(conversationItem(phone, friendName)).toBeVisible();
    await expect(messageLog(phone)).toBeHidden();
  });
}
