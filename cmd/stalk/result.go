package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/stalk-dev/stalk/amqp"
	"github.com/stalk-dev/stalk/result"
)

// peekWait is how long result without --wait listens to a stored queue
// for its messages.
const peekWait = 1500 * time.Millisecond

func (a *app) resultCommand() *cobra.Command {
	var (
		wait    bool
		keep    bool
		timeout time.Duration
		rf      replyFlags
	)
	cmd := &cobra.Command{
		Use:   "result ID [flags]",
		Short: "Show the state and result of a task id (celery result)",
		Long: `Show the state and result of task ID, which any process may have sent.

result reads the task's per-task reply queue (stalk.reply.ID). The final state
stays there until the queue expires (--result-expires, a day unused), until a
reader that printed it deletes it (stalk call, result and graph do, unless
--keep), or until something forgets it. Without --wait, result reports what
it finds now:

  - the final state (SUCCESS, FAILURE, REVOKED) with its result;
  - the latest state it saw while it listened, marked "no final state stored
    yet": intermediate states (STARTED, PROGRESS) are not stored for later
    readers, they go to whoever reads the queue when they are sent;
  - no state at all when it saw none ("state" is null with --json): the task is
    queued or running, and an earlier reader took its earlier states;
  - PENDING when there is no reply queue: the id is unknown, or its result
    expired or was deleted after it was read.

With --wait it waits for the final state, showing progress on stderr like
call. Only tasks sent with per-task reply queues (stalk's default) can be
looked up this way; results on a shared reply queue belong to the process that
sent them.

Exit status: 0 SUCCESS or not ready yet, 1 FAILURE or REVOKED (traceback on
stderr), 2 usage error, 3 --timeout passed with --wait, 4 broker unreachable.`,
		Example: `  stalk result 0b6e1f0c-3f0e-4a4e-9d1e-0f6c2a7d8e9f
  stalk result 0b6e1f0c-3f0e-4a4e-9d1e-0f6c2a7d8e9f --wait -t 60
  stalk result 0b6e1f0c-3f0e-4a4e-9d1e-0f6c2a7d8e9f --keep     # leave it for the next reader
  stalk -j result 0b6e1f0c-3f0e-4a4e-9d1e-0f6c2a7d8e9f | jq .state`,
		Args:              exactlyOneID("result"),
		ValidArgsFunction: noFileCompletion,
		RunE: runE(func(cmd *cobra.Command, args []string) error {
			if timeout > 0 {
				wait = true
			}
			return a.runResult(cmd.Context(), args[0], wait, timeout, keep, &rf)
		}),
	}
	fs := cmd.Flags()
	fs.BoolVarP(&wait, "wait", "w", false, "wait until the task is ready")
	secondsFlag(fs, &timeout, "timeout", "t", 0, "with --wait: stop waiting after this many `seconds` and exit 3 (implies --wait)")
	fs.BoolVar(&keep, "keep", false, "keep a final result on the broker after printing it (default: delete its reply queue)")
	a.addReplyFlags(fs, &rf)
	return cmd
}

// exactlyOneID is an Args check for commands that take one task id.
func exactlyOneID(name string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != 1 {
			return usagef("give exactly one task ID, e.g. 'stalk %s 0b6e1f0c-3f0e-4a4e-9d1e-0f6c2a7d8e9f'", name)
		}
		return nil
	}
}

// lookUpReply dials a per-task client and looks at id's reply queue.
// It looks before attaching: attaching declares the queue, and a typo
// should not leave one behind for a day, nor wait for ever.
func (a *app) lookUpReply(ctx context.Context, id string, rf *replyFlags) (*amqp.Client, amqp.QueueInfo, error) {
	opts, err := rf.options()
	if err != nil {
		return nil, amqp.QueueInfo{}, err
	}
	c, err := a.dialClient(ctx, append(opts, amqp.WithReplyMode(amqp.PerTask))...)
	if err != nil {
		return nil, amqp.QueueInfo{}, err
	}
	qi, err := c.QueueInfo(ctx, c.ReplyQueue(id))
	if err != nil {
		c.Close()
		if ctx.Err() != nil {
			return nil, qi, ctx.Err()
		}
		return nil, qi, fmt.Errorf("look up %s: %w", id, err)
	}
	return c, qi, nil
}

func (a *app) runResult(ctx context.Context, id string, wait bool, timeout time.Duration, keep bool, rf *replyFlags) error {
	c, qi, err := a.lookUpReply(ctx, id, rf)
	if err != nil {
		return err
	}
	defer c.Close()
	noQueue := fmt.Sprintf("there is no reply queue %s, so the id is unknown, or its result expired or was deleted after it was read", c.ReplyQueue(id))
	if !qi.Exists {
		if wait {
			return fmt.Errorf("nothing to wait for: %s", noQueue)
		}
		return a.showResult(id, &result.Meta{TaskID: id, Status: result.Pending}, "no result stored: "+noQueue)
	}
	if wait {
		r := c.AsyncResult(id)
		m, err := a.await(ctx, r, r.Name(), timeout, true, nil, !keep)
		if err != nil {
			return explainReplyErr(err)
		}
		return a.showResult(id, m, "")
	}
	r := c.AsyncResult(id)
	get := []result.GetOption{result.Timeout(peekWait)}
	if !keep {
		get = append(get, result.ForgetAfterGet())
	}
	m, err := r.GetMeta(ctx, get...)
	switch {
	case err == nil:
		return a.showResult(id, m, "")
	case errors.Is(err, result.ErrTimeout) && ctx.Err() == nil:
		_ = r.Release()
		// Not ready: report the latest state seen, if any, and nothing
		// we did not see.
		if e := r.Entry(); e != nil {
			if latest := e.Latest(); latest != nil {
				return a.showResult(id, latest, "no final state stored yet; this is the latest state seen while listening")
			}
		}
		return a.showResult(id, nil, "no final state stored yet, and no state seen while listening: the task is queued or running, and its earlier states went to the reader of that time; 'stalk result "+id+" --wait' waits for the final one")
	case ctx.Err() != nil:
		return ctx.Err()
	default:
		return explainReplyErr(fmt.Errorf("read %s: %w", id, err))
	}
}

// jsonTaskResult is result's --json line. State is null when no state
// was seen.
type jsonTaskResult struct {
	Event     string         `json:"event"`
	ID        string         `json:"id"`
	State     *string        `json:"state"`
	Ready     bool           `json:"ready"`
	Result    any            `json:"result,omitempty"`
	Meta      any            `json:"meta,omitempty"`
	Exception *jsonException `json:"exception,omitempty"`
	Traceback string         `json:"traceback,omitempty"`
	Worker    string         `json:"worker,omitempty"`
	DateDone  *time.Time     `json:"date_done,omitempty"`
	Note      string         `json:"note,omitempty"`
}

// showResult prints a task's state: on stdout, a small table (or one JSON
// object with --json); for FAILURE and REVOKED, the traceback and a
// one-line summary on stderr, and exit 1. m is nil when no state was seen.
func (a *app) showResult(id string, m *result.Meta, note string) error {
	var te *result.TaskError
	var st result.State
	if m != nil {
		te = m.Err()
		st = m.Status
	}
	if a.g.json {
		out := jsonTaskResult{Event: "result", ID: id, Ready: st.Ready(), Note: note}
		if m != nil {
			s := string(st)
			out.State = &s
			switch {
			case te != nil && st.Ready():
				out.Exception = newJSONException(te)
				out.Traceback = m.Traceback
			case st == result.Success:
				out.Result = rawOrNull(m.RawResult)
			case st != result.Pending:
				out.Meta = rawOrNull(m.RawResult)
			}
			out.Worker = m.Worker
			if !m.DateDone.IsZero() {
				out.DateDone = &m.DateDone
			}
		}
		a.jsonLine(out)
	} else {
		tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintf(tw, "id\t%s\n", id)
		if m == nil {
			fmt.Fprintf(tw, "state\t-\n")
		} else {
			fmt.Fprintf(tw, "state\t%s\n", st)
		}
		switch {
		case m == nil || st == result.Pending:
		case te != nil && st.Ready():
			fmt.Fprintf(tw, "exception\t%s\n", describeException(te))
		case st == result.Success:
			fmt.Fprintf(tw, "result\t%s\n", prettyJSON(m.RawResult, false))
		default:
			if string(rawOrNull(m.RawResult)) != "null" {
				fmt.Fprintf(tw, "meta\t%s\n", prettyJSON(m.RawResult, false))
			}
		}
		if m != nil && m.Worker != "" {
			fmt.Fprintf(tw, "worker\t%s\n", m.Worker)
		}
		if m != nil && !m.DateDone.IsZero() {
			fmt.Fprintf(tw, "done\t%s\n", m.DateDone.Local().Format(time.RFC3339))
		}
		if note != "" {
			fmt.Fprintf(tw, "note\t%s\n", note)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if te == nil || !st.Ready() {
		return nil
	}
	a.printTraceback(m.Traceback)
	fmt.Fprintf(a.stderr, "stalk %s: %s\n", a.cmd, describeFailure(te, ""))
	return exitCode(exitFailed)
}

// ---- reply queue flags ----------------------------------------------------------

// replyFlags are the reply-queue settings that must match the sender's
// for 'result' and 'graph' to attach to its per-task queues.
type replyFlags struct {
	expires time.Duration
	prefix  string
	envErr  error
}

func (a *app) addReplyFlags(fs *pflag.FlagSet, rf *replyFlags) {
	expires := 24 * time.Hour
	if v := strings.TrimSpace(a.getenv("STALK_RESULT_EXPIRES")); v != "" {
		d, err := parseDuration(v)
		if err != nil {
			rf.envErr = usagef("$STALK_RESULT_EXPIRES %q: %v", v, err)
		} else {
			expires = d
		}
	}
	prefix := "stalk.reply."
	if v := strings.TrimSpace(a.getenv("STALK_REPLY_PREFIX")); v != "" {
		prefix = v
	}
	secondsFlag(fs, &rf.expires, "result-expires", "", expires, "lifetime of unused per-task reply queues, in `seconds` or a duration (24h); must match the sender's; $STALK_RESULT_EXPIRES")
	fs.StringVar(&rf.prefix, "reply-prefix", prefix, "name `prefix` of per-task reply queues; must match the sender's; $STALK_REPLY_PREFIX")
}

func (rf *replyFlags) options() ([]amqp.Option, error) {
	if rf.envErr != nil {
		return nil, rf.envErr
	}
	if rf.expires < time.Second {
		return nil, usagef("--result-expires must be at least 1s")
	}
	if rf.prefix == "" {
		return nil, usagef("--reply-prefix must not be empty")
	}
	return []amqp.Option{amqp.WithResultExpires(rf.expires), amqp.WithReplyQueuePrefix(rf.prefix)}, nil
}
