//go:build !linux

package main

import "os"

func ttyIoctl(*os.File) (isTTY, known bool) { return false, false }

func winWidth(*os.File) int { return 0 }
