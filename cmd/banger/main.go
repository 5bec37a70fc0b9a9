// Command banger is the banger CLI; see internal/cli.
package main

import (
	"os"

	"github.com/banger/banger/internal/cli"
)

func main() { os.Exit(cli.Main(os.Args[1:])) }
