package result

import "testing"

// Result bodies exactly as a Celery 5 worker publishes them (see the
// captures in PROTOCOL §3.2).
var (
	benchSuccess = []byte(`{"task_id": "b4ff2cdd-3091-4443-ba7f-440916158df4", "status": "SUCCESS", "result": 5, "traceback": null, "children": []}`)
	benchStarted = []byte(`{"task_id": "b4ff2cdd-3091-4443-ba7f-440916158df4", "status": "STARTED", "result": {"hostname": "w1@vm", "pid": 9716}, "traceback": null, "children": []}`)
	benchFailure = []byte(`{"task_id": "b4ff2cdd-3091-4443-ba7f-440916158df4", "status": "FAILURE", "result": {"exc_type": "RuntimeError", "exc_message": ["try again"], "exc_module": "builtins"}, "traceback": "Traceback (most recent call last):\n  File \"/usr/lib/python3/dist-packages/celery/app/trace.py\", line 451, in trace_task\n    R = retval = fun(*args, **kwargs)\nRuntimeError: try again\n", "children": []}`)
	benchLarge   = func() []byte {
		b := []byte(`{"task_id": "b4ff2cdd-3091-4443-ba7f-440916158df4", "status": "SUCCESS", "result": [`)
		for i := 0; i < 1000; i++ {
			if i > 0 {
				b = append(b, ", "...)
			}
			b = append(b, `{"id": 12345, "name": "item", "score": 0.5}`...)
		}
		return append(b, `], "traceback": null, "children": []}`...)
	}()
)

func benchDecodeMeta(b *testing.B, body []byte) {
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if _, err := DecodeMeta(body); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeMetaSuccess(b *testing.B) { benchDecodeMeta(b, benchSuccess) }
func BenchmarkDecodeMetaStarted(b *testing.B) { benchDecodeMeta(b, benchStarted) }
func BenchmarkDecodeMetaFailure(b *testing.B) { benchDecodeMeta(b, benchFailure) }
func BenchmarkDecodeMetaLarge(b *testing.B)   { benchDecodeMeta(b, benchLarge) }

// BenchmarkDecodeMessage is the consumer's full decode step for a typical
// result: content type check plus body.
func BenchmarkDecodeMessage(b *testing.B) {
	b.ReportAllocs()
	b.SetBytes(int64(len(benchSuccess)))
	for b.Loop() {
		if _, err := DecodeMessage("application/json", "utf-8", benchSuccess, DecodeOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEntryDeliver records a decoded SUCCESS on a fresh entry, which
// settles its promise: the consumer's step after the lookup.
func BenchmarkEntryDeliver(b *testing.B) {
	m, err := DecodeMeta(benchSuccess)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		e := NewEntry(m.TaskID)
		e.Deliver(m)
	}
}
