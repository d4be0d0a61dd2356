package main

import (
	"context"
	"errors"
)

type pendingReport struct {
	Pending         int     `json:"pending"`
	RSSMB           float64 `json:"rss_mb"`
	BaselineRSSMB   float64 `json:"baseline_rss_mb"`
	HeapMB          float64 `json:"heap_mb"`
	ChannelsIdle    int     `json:"channels_idle"`
	ChannelsPending int     `json:"channels_pending"`
}

const childEnv = "STALK_BENCH_CHILD"

func childMain() int { return 1 }

func runStalk(ctx context.Context, cfg *config, mode string, n int) (modeResult, *int, error) {
	return modeResult{}, nil, errors.New("stalk client not landed")
}
func runPendingChild(ctx context.Context, cfg *config) (*pendingReport, error) {
	return nil, errors.New("stalk client not landed")
}
func pertaskChannels(ctx context.Context, cfg *config) (*int, int, error) {
	return nil, 0, errors.New("stalk client not landed")
}
