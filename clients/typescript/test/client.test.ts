/**
 * The client against a live convstore server (CONVSTORE_URL, CONVSTORE_KEY), with the fake
 * upstream behind it: run by tests/test_typescript_client.py, on SQLite and PostgreSQL.
 */
import assert from "node:assert/strict";
import { test } from "node:test";

import { ProblemError, createConvstoreClient, streamTurn } from "../src/index.js";

const baseUrl = process.env.CONVSTORE_URL;
const apiKey = process.env.CONVSTORE_KEY;
if (!baseUrl || !apiKey) {
  throw new Error("CONVSTORE_URL and CONVSTORE_KEY must name a live server and a tenant's key");
}
const client = createConvstoreClient({ baseUrl, apiKey });

async function newConversation(title: string): Promise<string> {
  const { data, error, response } = await client.POST("/v1/conversations", {
    body: { title, messages: [{ role: "system", content: "You are terse." }] },
  });
  assert.equal(response.status, 201, JSON.stringify(error));
  assert.ok(data);
  return data.id;
}

test("create a conversation, take a turn, read it back", async () => {
  const id = await newConversation("typed");
  const { data: turn, response } = await client.POST("/v1/conversations/{conversation_id}/turns", {
    params: { path: { conversation_id: id } },
    body: { messages: [{ role: "user", content: "Hello from TypeScript" }] },
  });
  assert.equal(response.status, 201);
  assert.ok(turn);
  assert.equal(turn.turn.status, "completed");
  assert.equal(turn.reply.role, "assistant");
  assert.ok(typeof turn.reply.content === "string" && turn.reply.content.length > 0);

  const { data: messages } = await client.GET("/v1/conversations/{conversation_id}/messages", {
    params: { path: { conversation_id: id } },
  });
  assert.ok(messages);
  assert.deepEqual(
    messages.data.map((m) => m.role),
    ["system", "user", "assistant"],
  );
});

test("stream a turn: turn.started, deltas, turn.completed with the stored reply", async () => {
  const id = await newConversation("streamed");
  const events = [];
  for await (const event of streamTurn(client, id, {
    messages: [{ role: "user", content: "Stream to me" }],
  })) {
    events.push(event);
  }
  const names = events.map((e) => e.event);
  assert.equal(names[0], "turn.started");
  assert.equal(names.at(-1), "turn.completed");
  const deltas = events.filter((e) => e.event === "message.delta");
  assert.ok(deltas.length > 0);
  const streamed = deltas.map((e) => String(e.data.content ?? "")).join("");
  const reply = events.at(-1)!.data.reply as { content: string };
  assert.equal(streamed, reply.content);
});

test("a refused turn throws the service's problem", async () => {
  await assert.rejects(
    async () => {
      for await (const _ of streamTurn(client, "01a00000-0000-7000-8000-000000000000", {
        messages: [{ role: "user", content: "anyone?" }],
      })) {
        // never reached
      }
    },
    (error: unknown) =>
      error instanceof ProblemError && error.status === 404 && error.problem.status === 404,
  );
});

test("list conversations newest first, with keyset pages", async () => {
  const ids = [await newConversation("page a"), await newConversation("page b")];
  const { data: first } = await client.GET("/v1/conversations", {
    params: { query: { limit: 1 } },
  });
  assert.ok(first);
  assert.equal(first.data.length, 1);
  assert.equal(first.data[0].id, ids[1]);
  assert.ok(first.next_cursor);
  const { data: second } = await client.GET("/v1/conversations", {
    params: { query: { limit: 1, cursor: first.next_cursor } },
  });
  assert.ok(second);
  assert.equal(second.data[0].id, ids[0]);
});

test("a frontend lists one end user's conversations", async () => {
  const user = `person-${Date.now()}`;
  const { data: mine } = await client.POST("/v1/conversations", {
    body: { title: "theirs", user, messages: [{ role: "user", content: "hi" }] },
  });
  await newConversation("someone else's");
  assert.ok(mine);
  assert.equal(mine.user, user);
  const { data: listed } = await client.GET("/v1/conversations", {
    params: { query: { user } },
  });
  assert.ok(listed);
  assert.deepEqual(
    listed.data.map((c) => c.id),
    [mine.id],
  );
});

test("export a conversation as a JSON transcript", async () => {
  const id = await newConversation("exported");
  const { data, response } = await client.GET("/v1/conversations/{conversation_id}/export", {
    params: { path: { conversation_id: id } },
  });
  assert.equal(response.status, 200);
  assert.ok(data);
  assert.equal(data.conversation.id, id);
  assert.equal(data.messages.length, 1);
});
