package revoketest

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stalk-dev/stalk/amqp"
	"github.com/stalk-dev/stalk/integration/harness"
	"github.com/stalk-dev/stalk/result"
	"github.com/stalk-dev/stalk/revoke"
)

// A task sent with a countdown waits in the worker's timer; revoked
// meanwhile, it is skipped when its eta comes and reported REVOKED.
func TestRevokeQueuedTask(t *testing.T) {
	workers(t)
	cl := client(t)
	r := send(t, cl, "tasks.slow", []any{30}, 3*time.Second)

	ctx := harness.Ctx(t, 30*time.Second)
	replies, err := r.Revoke(ctx)
	require.NoError(t, err)
	require.Nil(t, replies, "without Wait a revoke is publish-and-confirm only")

	assert.Equal(t, "revoked", getRevoked(t, r))
}

// The same through a standalone Controller, for a task id only.
func TestRevokeQueuedTaskByID(t *testing.T) {
	workers(t)
	c := controller(t)
	r := send(t, client(t), "tasks.add", []any{1, 2}, 3*time.Second)

	ctx := harness.Ctx(t, 30*time.Second)
	_, err := c.Revoke(ctx, []string{r.ID()})
	require.NoError(t, err)
	assert.Equal(t, "revoked", getRevoked(t, r))
}

// A running task is killed with SIGTERM, then another with SIGKILL; both
// workers answer, and their replies are typed.
func TestRevokeRunningTaskTerminate(t *testing.T) {
	a, b := workers(t)
	cl := client(t)

	for _, sig := range []string{"SIGTERM", "SIGKILL"} {
		t.Run(sig, func(t *testing.T) {
			r := send(t, cl, "tasks.slow", []any{30}, 0)
			waitStarted(t, r)

			ctx := harness.Ctx(t, 30*time.Second)
			opts := []revoke.Option{revoke.Terminate(), revoke.Signal(sig), revoke.Wait(2 * time.Second)}
			if sig == "SIGKILL" {
				// Named destinations end the collection as soon as both answered.
				opts = append(opts, revoke.Destination(a.Hostname, b.Hostname))
			}
			replies, err := r.Revoke(ctx, opts...)
			require.NoError(t, err)
			ra, rb := replyFrom(t, replies, a.Hostname), replyFrom(t, replies, b.Hostname)
			t.Logf("revoke terminate %s replies: %s=%s %s=%s", sig, ra.Worker, ra.Value, rb.Worker, rb.Value)
			for _, rp := range []revoke.Reply{ra, rb} {
				assert.Empty(t, rp.Error)
				assert.NoError(t, rp.Err())
				assert.True(t, strings.HasPrefix(rp.OK, "terminate: "), "ok = %q", rp.OK)
				assert.True(t, json.Valid(rp.Value))
			}
			// Exactly one of the two ran the task and names it; the other
			// says "terminate: tasks unknown".
			named := strings.Contains(ra.OK, r.ID()) != strings.Contains(rb.OK, r.ID())
			assert.True(t, named, "one worker should report terminating %s: %q, %q", r.ID(), ra.OK, rb.OK)

			assert.Equal(t, "terminated", getRevoked(t, r))
		})
	}
}

// Destination sends the command to one worker only, and only it replies.
func TestRevokeDestination(t *testing.T) {
	a, b := workers(t)
	c := controller(t)
	ctx := harness.Ctx(t, 20*time.Second)

	id := uuid.NewString()
	replies, err := c.Revoke(ctx, []string{id}, revoke.Destination(a.Hostname), revoke.Wait(time.Second))
	require.NoError(t, err)
	require.Len(t, replies, 1)
	assert.Equal(t, a.Hostname, replies[0].Worker)
	assert.Contains(t, replies[0].OK, id)
	t.Logf("revoke reply: %s", replies[0].Value)

	// Only the destination adds the id to its revoked set.
	revoked, err := c.RevokedIDs(ctx, revoke.Destination(a.Hostname, b.Hostname))
	require.NoError(t, err)
	assert.Contains(t, revoked[a.Hostname], id)
	assert.NotContains(t, revoked[b.Hostname], id)

	pong, err := c.Ping(ctx, revoke.Destination(b.Hostname))
	require.NoError(t, err)
	require.Len(t, pong, 1)
	assert.Equal(t, b.Hostname, pong[0].Worker)
}

// Ping sees both workers. A broadcast reaches every worker on the broker,
// other runs' too, so the test looks for its own.
func TestRevokePing(t *testing.T) {
	a, b := workers(t)
	c := controller(t)
	ctx := harness.Ctx(t, 20*time.Second)

	replies, err := c.Ping(ctx)
	require.NoError(t, err)
	for _, w := range []string{a.Hostname, b.Hostname} {
		r := replyFrom(t, replies, w)
		assert.Equal(t, "pong", r.OK)
		assert.JSONEq(t, `{"ok": "pong"}`, string(r.Value))
	}

	replies, err = c.Ping(ctx, revoke.Destination(a.Hostname, b.Hostname))
	require.NoError(t, err)
	assert.ElementsMatch(t, []string{a.Hostname, b.Hostname}, workerNames(replies))
}

// A stopped worker does not answer: ping returns the live ones within the
// idle timeout, and names the silent one in an ErrNoReply.
func TestRevokePingStoppedWorker(t *testing.T) {
	a, b := workers(t)
	c := controller(t)
	third, err := harness.StartWorker(harness.WorkerConfig{
		Queue: harness.Name("revoke-third"), Name: "revoke-c-" + harness.RunID, Concurrency: 1,
	})
	require.NoError(t, err)
	all := []string{a.Hostname, b.Hostname, third.Hostname}

	ctx := harness.Ctx(t, 30*time.Second)
	replies, err := c.Ping(ctx, revoke.Destination(all...))
	require.NoError(t, err)
	assert.ElementsMatch(t, all, workerNames(replies))

	third.Stop()

	start := time.Now()
	replies, err = c.Ping(ctx, revoke.Destination(all...), revoke.Wait(time.Second))
	took := time.Since(start)
	require.Error(t, err)
	assert.ErrorIs(t, err, revoke.ErrNoReply)
	assert.Contains(t, err.Error(), third.Hostname)
	assert.NotContains(t, err.Error(), a.Hostname)
	assert.ElementsMatch(t, []string{a.Hostname, b.Hostname}, workerNames(replies))
	// The collection ends at the idle timeout after the last reply, not at
	// ctx: about one second, with room for a loaded machine.
	assert.GreaterOrEqual(t, took, time.Second, "ended before the idle timeout")
	assert.Less(t, took, 5*time.Second, "ping must end at the idle timeout")
	t.Logf("ping with a stopped destination took %s: %v", took, err)
}

// inspect revoked lists an id after a revoke, on every worker.
func TestRevokeInspectRevoked(t *testing.T) {
	a, b := workers(t)
	c := controller(t)
	ctx := harness.Ctx(t, 20*time.Second)

	ids := []string{uuid.NewString(), uuid.NewString()}
	replies, err := c.Revoke(ctx, ids, revoke.Destination(a.Hostname, b.Hostname), revoke.Wait(2*time.Second))
	require.NoError(t, err)
	require.Len(t, replies, 2)
	for _, r := range replies {
		assert.Contains(t, r.OK, "flagged as revoked")
		for _, id := range ids {
			assert.Contains(t, r.OK, id)
		}
	}

	revoked, err := c.RevokedIDs(ctx, revoke.Destination(a.Hostname, b.Hostname))
	require.NoError(t, err)
	for _, w := range []string{a.Hostname, b.Hostname} {
		assert.Subset(t, revoked[w], ids, "worker %s", w)
	}

	raw, err := c.Inspect(ctx, "revoked", nil, revoke.Destination(a.Hostname))
	require.NoError(t, err)
	require.Len(t, raw, 1)
	var list []string
	require.NoError(t, json.Unmarshal(raw[0].Value, &list))
	assert.Subset(t, list, ids)
}

// inspect active shows a running task, on the worker that runs it.
func TestRevokeInspectActive(t *testing.T) {
	a, b := workers(t)
	c := controller(t)
	task := send(t, client(t), "tasks.slow", []any{30}, 0)
	waitStarted(t, task)
	t.Cleanup(func() {
		ctx := harness.Ctx(t, 10*time.Second)
		_, _ = task.Revoke(ctx, revoke.Terminate(), revoke.Signal("KILL"))
	})

	ctx := harness.Ctx(t, 20*time.Second)
	active, err := c.Active(ctx, revoke.Destination(a.Hostname, b.Hostname))
	require.NoError(t, err)
	require.Contains(t, active, a.Hostname)
	require.Contains(t, active, b.Hostname)
	var found *revoke.TaskInfo
	var on string
	for w, ts := range active {
		for i := range ts {
			if ts[i].ID == task.ID() {
				found, on = &ts[i], w
			}
		}
	}
	require.NotNil(t, found, "task %s not active on %v", task.ID(), active)
	t.Logf("active on %s: %+v args=%s", on, *found, found.Args)
	assert.Equal(t, "tasks.slow", found.Name)
	assert.Equal(t, on, found.Hostname)
	assert.JSONEq(t, `[30]`, string(found.Args))
	assert.Equal(t, taskQueue, found.DeliveryInfo.RoutingKey)
	assert.WithinDuration(t, time.Now(), found.Started(), time.Minute)
	require.NotNil(t, found.WorkerPID)
	assert.Positive(t, *found.WorkerPID)
}

// revoke_by_stamped_headers revokes stalk-sent tasks by their stamps on
// Celery 5.3+ workers (amqp.Stamp sends stamps as 5.3+ stamping does).
func TestRevokeByStampedHeaders(t *testing.T) {
	if !harness.CeleryAtLeast(5, 3) {
		t.Skipf("Celery %s predates revoke_by_stamped_headers: TestRevokeByStampedHeadersOldWorker covers it", harness.CeleryVersion())
	}
	a, b := workers(t)
	c := controller(t)
	ctx := harness.Ctx(t, 30*time.Second)
	batch := "b-" + harness.RunID
	replies, err := c.RevokeByStampedHeaders(ctx, map[string][]string{"stalk_batch": {batch}},
		revoke.Destination(a.Hostname, b.Hostname), revoke.Wait(2*time.Second))
	require.NoError(t, err)
	require.Len(t, replies, 2)
	for _, r := range replies {
		assert.Contains(t, r.OK, batch, "%s", r.Value)
	}
	cl := client(t)
	stamped, err := cl.Send(ctx, "tasks.add", amqp.Args(1, 2), amqp.Queue(taskQueue), amqp.Stamp("stalk_batch", batch))
	require.NoError(t, err)
	other, err := cl.Send(ctx, "tasks.add", amqp.Args(1, 2), amqp.Queue(taskQueue), amqp.Stamp("stalk_batch", "another"))
	require.NoError(t, err)
	_, err = stamped.Get(ctx)
	assert.ErrorIs(t, err, result.ErrRevoked, "the stamped task is revoked")
	v, err := other.Get(ctx)
	require.NoError(t, err)
	assert.Equal(t, int64(3), v)
}

// Celery before 5.3 has no revoke_by_stamped_headers. Asked for a reply,
// each worker answers with an error naming the unknown command; that comes
// back as a *WorkerError per worker, not a hang.
func TestRevokeByStampedHeadersOldWorker(t *testing.T) {
	if harness.CeleryAtLeast(5, 3) {
		t.Skipf("Celery %s has revoke_by_stamped_headers: TestRevokeByStampedHeaders covers it", harness.CeleryVersion())
	}
	a, b := workers(t)
	c := controller(t)
	ctx := harness.Ctx(t, 20*time.Second)

	start := time.Now()
	replies, err := c.RevokeByStampedHeaders(ctx, map[string][]string{"stalk_batch": {"b-" + harness.RunID}},
		revoke.Destination(a.Hostname, b.Hostname), revoke.Wait(2*time.Second))
	took := time.Since(start)
	require.Error(t, err)
	t.Logf("revoke_by_stamped_headers on Celery %s (%s): %v", harness.CeleryVersion(), took, err)
	require.Len(t, replies, 2)
	for _, r := range replies {
		t.Logf("reply %s: %s", r.Worker, r.Value)
		assert.NotEmpty(t, r.Error)
		assert.Contains(t, r.Error, "revoke_by_stamped_headers")
	}
	var we *revoke.WorkerError
	require.ErrorAs(t, err, &we)
	assert.Equal(t, "revoke_by_stamped_headers", we.Method)
	assert.Contains(t, []string{a.Hostname, b.Hostname}, we.Worker)
	assert.Contains(t, err.Error(), a.Hostname)
	assert.Contains(t, err.Error(), b.Hostname)
	assert.NotErrorIs(t, err, revoke.ErrNoReply)
	assert.Less(t, took, 10*time.Second)

	// Without Wait it is publish-and-confirm, and the worker ignores it.
	replies, err = c.RevokeByStampedHeaders(ctx, map[string][]string{"stalk_batch": {"x", "y"}})
	require.NoError(t, err)
	assert.Nil(t, replies)

	// The same through AsyncResult, on the amqp client's Controller.
	r := send(t, client(t), "tasks.add", []any{1, 2}, 0)
	_, err = r.RevokeByStampedHeaders(ctx, map[string][]string{"stalk_batch": {"z"}},
		revoke.Destination(a.Hostname), revoke.Wait(2*time.Second))
	require.ErrorAs(t, err, &we)
	assert.Equal(t, a.Hostname, we.Worker)

	// The workers are still well after it.
	_, err = c.Ping(ctx, revoke.Destination(a.Hostname, b.Hostname))
	require.NoError(t, err)
}

// An unknown command comes back as an error naming each worker.
func TestRevokeInspectUnknownCommand(t *testing.T) {
	a, b := workers(t)
	c := controller(t)
	ctx := harness.Ctx(t, 20*time.Second)

	replies, err := c.Inspect(ctx, "no_such_command", nil, revoke.Destination(a.Hostname, b.Hostname))
	require.Error(t, err)
	require.Len(t, replies, 2)
	var we *revoke.WorkerError
	require.ErrorAs(t, err, &we)
	assert.Contains(t, err.Error(), a.Hostname)
	assert.Contains(t, err.Error(), b.Hostname)
	t.Logf("unknown command: %v", err)
}

// Bad input is an error before anything is published: a tap on
// celery.pidbox sees the good command sent after the bad ones, and never
// the bad ones.
func TestRevokeBadInput(t *testing.T) {
	workers(t)
	c := controller(t)
	tp := tap(t)
	ctx := harness.Ctx(t, 20*time.Second)
	bad := "bad-" + harness.RunID + "@nowhere"
	good := "good-" + harness.RunID + "@nowhere"

	_, err := c.Revoke(ctx, nil, revoke.Destination(bad))
	require.ErrorIs(t, err, revoke.ErrInvalidArgument)
	_, err = c.Revoke(ctx, []string{}, revoke.Destination(bad), revoke.Wait(time.Second))
	require.ErrorIs(t, err, revoke.ErrInvalidArgument)
	_, err = c.Revoke(ctx, []string{uuid.NewString()}, revoke.Destination(bad), revoke.Terminate(), revoke.Signal("SIGNOPE"))
	require.ErrorIs(t, err, revoke.ErrInvalidSignal)
	require.ErrorIs(t, err, revoke.ErrInvalidArgument)
	_, err = c.Revoke(ctx, []string{uuid.NewString()}, revoke.Destination(bad), revoke.Terminate(), revoke.Signal("0"))
	require.ErrorIs(t, err, revoke.ErrInvalidSignal)
	_, err = c.Revoke(ctx, []string{uuid.NewString()}, revoke.Destination(bad), revoke.Terminate(), revoke.Signal("sigterm "))
	require.NoError(t, err, "names are accepted in any case") // this one is published, to "bad"

	_, err = c.RevokeByStampedHeaders(ctx, map[string][]string{}, revoke.Destination(bad))
	require.ErrorIs(t, err, revoke.ErrInvalidArgument)

	id := uuid.NewString()
	_, err = c.Revoke(ctx, []string{id}, revoke.Destination(good))
	require.NoError(t, err)

	// The accepted "sigterm " revoke is the only message to "bad".
	_, body, err := tp.next(ctx, bad, good)
	require.NoError(t, err)
	args := body["arguments"].(map[string]any)
	assert.Equal(t, "SIGTERM", args["signal"])
	_, body, err = tp.next(ctx, bad, good)
	require.NoError(t, err)
	assert.Equal(t, []any{good}, body["destination"], "a bad command reached the broker: %v", body)
	assert.Equal(t, id, body["arguments"].(map[string]any)["task_id"])
}

// What we publish has Celery's form: properties, header types, body keys
// in Celery's order.
func TestRevokeWireForm(t *testing.T) {
	workers(t)
	c := controller(t)
	tp := tap(t)
	ctx := harness.Ctx(t, 20*time.Second)
	dest := "wire-" + harness.RunID + "@nowhere"

	ids := []string{uuid.NewString(), uuid.NewString()}
	_, err := c.Revoke(ctx, ids, revoke.Destination(dest), revoke.Terminate(), revoke.Signal("9"))
	require.NoError(t, err)
	d, body, err := tp.next(ctx, dest)
	require.NoError(t, err)
	assert.Equal(t, "application/json", d.ContentType)
	assert.Equal(t, "utf-8", d.ContentEncoding)
	assert.Equal(t, uint8(2), d.DeliveryMode)
	assert.Equal(t, uint8(0), d.Priority)
	assert.Equal(t, "", d.RoutingKey)
	assert.Equal(t, "celery.pidbox", d.Exchange)
	assert.IsType(t, int64(0), d.Headers["clock"])
	assert.EqualValues(t, 0, d.Headers["expires"], "no reply wanted: expires 0")
	assert.Equal(t, "revoke", body["method"])
	assert.Equal(t, map[string]any{"task_id": []any{ids[0], ids[1]}, "terminate": true, "signal": float64(9)}, body["arguments"])
	assert.Nil(t, body["pattern"])
	assert.Nil(t, body["matcher"])
	assert.NotContains(t, body, "ticket")
	assert.NotContains(t, body, "reply_to")
	assert.True(t, strings.HasPrefix(string(d.Body), `{"method":"revoke","arguments":{"task_id":[`), "%s", d.Body)
	clock1 := d.Headers["clock"].(int64)

	// With a reply wanted: ticket, reply_to and a float expires.
	before := float64(time.Now().Unix())
	_, err = c.Ping(ctx, revoke.Destination(dest), revoke.Wait(300*time.Millisecond))
	require.ErrorIs(t, err, revoke.ErrNoReply)
	d, body, err = tp.next(ctx, dest)
	require.NoError(t, err)
	assert.Greater(t, d.Headers["clock"].(int64), clock1, "the Lamport clock advances")
	exp, ok := d.Headers["expires"].(float64)
	require.True(t, ok, "expires is a float: %T", d.Headers["expires"])
	assert.InDelta(t, before, exp, 5)
	assert.Equal(t, "ping", body["method"])
	assert.Equal(t, map[string]any{}, body["arguments"])
	assert.NotEmpty(t, body["ticket"])
	rt := body["reply_to"].(map[string]any)
	assert.Equal(t, "reply.celery.pidbox", rt["exchange"])
	assert.NotEmpty(t, rt["routing_key"])
	assert.True(t, strings.HasPrefix(string(d.Body),
		`{"method":"ping","arguments":{},"destination":["`+dest+`"],"pattern":null,"matcher":null,"ticket":"`), "%s", d.Body)
}

// Close is idempotent, ends commands in flight, and later commands fail
// with ErrClosed.
func TestRevokeClose(t *testing.T) {
	workers(t)
	c := controller(t)
	ctx := harness.Ctx(t, 20*time.Second)
	done := make(chan error, 1)
	go func() {
		// Nobody answers this destination: the collection waits 10 s.
		_, err := c.Ping(ctx, revoke.Destination("nobody-"+harness.RunID+"@nowhere"), revoke.Wait(10*time.Second))
		done <- err
	}()
	time.Sleep(500 * time.Millisecond)
	require.NoError(t, c.Close())
	require.NoError(t, c.Close())
	select {
	case err := <-done:
		assert.ErrorIs(t, err, revoke.ErrClosed)
	case <-time.After(5 * time.Second):
		t.Fatal("Close left a command waiting")
	}
	_, err := c.Revoke(ctx, []string{uuid.NewString()})
	assert.ErrorIs(t, err, revoke.ErrClosed)
	assert.True(t, errors.Is(err, revoke.ErrClosed))
}

// Commands running at once each get their own replies: the router hands
// them over by ticket, and the first ones race to set the reply queue up.
func TestRevokeConcurrentCommands(t *testing.T) {
	a, b := workers(t)
	c := controller(t)
	ctx := harness.Ctx(t, 30*time.Second)
	both := revoke.Destination(a.Hostname, b.Hostname)

	const n = 8
	errs := make(chan error, n)
	for i := range n {
		go func() {
			var replies []revoke.Reply
			var err error
			if i%2 == 0 {
				replies, err = c.Ping(ctx, both)
			} else {
				id := uuid.NewString()
				replies, err = c.Revoke(ctx, []string{id}, both, revoke.Wait(2*time.Second))
				for _, r := range replies {
					if !strings.Contains(r.OK, id) {
						err = errors.Join(err, fmt.Errorf("reply for another command: %s", r.Value))
					}
				}
			}
			if err == nil && len(replies) != 2 {
				err = fmt.Errorf("command %d: %d replies: %v", i, len(replies), workerNames(replies))
			}
			errs <- err
		}()
	}
	for range n {
		require.NoError(t, <-errs)
	}
	assert.Zero(t, c.Dropped())
}
