"""`python -m minisgl.launch_server --model-path ...`: the server entry that `minisgl launch`
starts for each instance (sglang's `sglang.launch_server` equivalent)."""

from .cli import main

if __name__ == "__main__":
    import sys

    main(["serve", *sys.argv[1:]])
