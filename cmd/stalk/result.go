package main

import (
	"context"
	"errors"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/stalk-dev/stalk/amqp"
	"github.com/stalk-dev/stalk/result"
)

var resultSpec = cmdSpec{
	name:     "result",
	synopsis: "result ID [--wait] [--timeout D]",
	about: `Show the state and result of task ID, which any process may have sent.

result attaches to the task's per-task reply queue (stalk.reply.ID), where the
final state stays readable until the queue expires (24 h unused). Without
--wait it reports what is stored now: PENDING when nothing is (the task is
unknown, queued, or its result expired), the latest state of a running task,
or the final state with its result. With --wait it waits for the final state,
showing progress on stderr like call.

Only tasks sent with per-task reply queues (stalk's default) can be looked up
this way; results on a shared reply queue belong to the process that sent them.

Exit status: 0 SUCCESS or not ready yet, 1 FAILURE or REVOKED (traceback on
stderr), 2 usage error, 3 --timeout passed with --wait, 4 broker unreachable.`,
	examples: `
stalk result 0b6e1f0c-3f0e-4a4e-9d1e-0f6c2a7d8e9f
stalk result 0b6e1f0c-3f0e-4a4e-9d1e-0f6c2a7d8e9f --wait --timeout 1m
stalk --json result 0b6e1f0c-3f0e-4a4e-9d1e-0f6c2a7d8e9f | jq .state`,
}

// peekWait is how long result without --wait listens to a stored queue
// for its messages.
const peekWait = 1500 * time.Millisecond

func runResult(ctx context.Context, a *app, args []string) error {
	fs := a.newFlagSet(resultSpec)
	wait := fs.Bool("wait", false, "wait until the task is ready")
	timeout := fs.Duration("timeout", 0, "with --wait: stop waiting after this `duration` and exit 3 (default: no limit)")
	rf := addReplyFlags(fs)
	pos, err := a.parse(fs, resultSpec, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("give exactly one task ID, e.g. 'stalk result 0b6e1f0c-3f0e-4a4e-9d1e-0f6c2a7d8e9f'")
	}
	id := pos[0]
	if *timeout < 0 {
		return usagef("--timeout must not be negative")
	}
	if *timeout > 0 && !*wait {
		*wait = true
	}
	opts, err := rf.options()
	if err != nil {
		return err
	}
	c, err := a.dialClient(ctx, append(opts, amqp.WithReplyMode(amqp.PerTask))...)
	if err != nil {
		return err
	}
	defer c.Close()

	if *wait {
		r := c.AsyncResult(id)
		m, err := a.await(ctx, r, id, *timeout, true)
		if err != nil {
			return explainReplyErr(err)
		}
		return a.showResult(id, m, m.Status)
	}

	// Look before attaching: attaching declares the queue, and a typo
	// should not leave one behind for a day.
	ok, err := c.AsyncResult(id).Exists(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("look up %s: %w", id, err)
	}
	if !ok {
		return a.showResult(id, nil, result.Pending)
	}
	r := c.AsyncResult(id)
	m, err := r.GetMeta(ctx, result.Timeout(peekWait))
	switch {
	case err == nil:
		return a.showResult(id, m, m.Status)
	case errors.Is(err, result.ErrTimeout) && ctx.Err() == nil:
		// Not ready: report the latest state seen, if any.
		if e := r.Entry(); e != nil {
			if latest := e.Latest(); latest != nil {
				return a.showResult(id, latest, latest.Status)
			}
		}
		return a.showResult(id, nil, result.Pending)
	case ctx.Err() != nil:
		return ctx.Err()
	default:
		return explainReplyErr(fmt.Errorf("read %s: %w", id, err))
	}
}

// jsonTaskResult is result's --json line.
type jsonTaskResult struct {
	ID        string         `json:"id"`
	State     string         `json:"state"`
	Ready     bool           `json:"ready"`
	Result    any            `json:"result,omitempty"`
	Meta      any            `json:"meta,omitempty"`
	Exception *jsonException `json:"exception,omitempty"`
	Traceback string         `json:"traceback,omitempty"`
	Worker    string         `json:"worker,omitempty"`
	DateDone  *time.Time     `json:"date_done,omitempty"`
}

// showResult prints a task's state: on stdout, a small table (or one JSON
// object with --json); for FAILURE and REVOKED, the traceback and a
// one-line summary on stderr, and exit 1.
func (a *app) showResult(id string, m *result.Meta, st result.State) error {
	var te *result.TaskError
	if m != nil {
		te = m.Err()
	}
	if a.g.json {
		out := jsonTaskResult{ID: id, State: string(st), Ready: st.Ready()}
		if m != nil {
			switch {
			case te != nil && st.Ready():
				out.Exception = newJSONException(te)
				out.Traceback = m.Traceback
			case st == result.Success:
				out.Result = rawOrNull(m.RawResult)
			default:
				out.Meta = rawOrNull(m.RawResult)
			}
			if m.Worker != "" {
				out.Worker = m.Worker
			}
			if !m.DateDone.IsZero() {
				out.DateDone = &m.DateDone
			}
		}
		if err := writeJSONLine(a.stdout, out); err != nil {
			return err
		}
	} else {
		tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintf(tw, "id\t%s\n", id)
		fmt.Fprintf(tw, "state\t%s\n", st)
		switch {
		case m == nil:
			fmt.Fprintf(tw, "note\tno state stored: the task is unknown, still queued, or its result expired\n")
		case te != nil && st.Ready():
			fmt.Fprintf(tw, "exception\t%s\n", describeException(te))
		case st == result.Success:
			fmt.Fprintf(tw, "result\t%s\n", prettyJSON(m.RawResult, false))
		default:
			if m.RawResult != nil && string(rawOrNull(m.RawResult)) != "null" {
				fmt.Fprintf(tw, "meta\t%s\n", prettyJSON(m.RawResult, false))
			}
		}
		if m != nil && !m.DateDone.IsZero() {
			fmt.Fprintf(tw, "done\t%s\n", m.DateDone.Local().Format(time.RFC3339))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if te == nil || !st.Ready() {
		return nil
	}
	if !a.g.json && m.Traceback != "" {
		fmt.Fprint(a.stderr, m.Traceback)
		if m.Traceback[len(m.Traceback)-1] != '\n' {
			fmt.Fprintln(a.stderr)
		}
	}
	fmt.Fprintf(a.stderr, "stalk %s: %s\n", a.cmd, describeFailure(te, ""))
	return exitCode(exitFailed)
}

func describeException(te *result.TaskError) string {
	exc := te.QualifiedType()
	if exc == "" {
		exc = "Exception"
	}
	if msg := te.Message(); msg != "" {
		exc += ": " + msg
	}
	return exc
}
