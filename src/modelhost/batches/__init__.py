"""The Batch API (issue #15): a file of requests run in the background, at lower priority, durably.

- `objects.py`: create, retrieve, list, cancel (the routes' plain functions);
- `lines.py`: the input file's lines (read by `files.batch_input.numbered_lines`) checked against the batch;
- `dispatch.py`: a line sent through the app's own ASGI stack as the batch's `Principal`, so its
  answer is byte for byte the interactive one;
- `answers.py`: a line's refusals, retries, usage and output-file line;
- `runner.py`: each replica's runner, claiming validation, lines and finalization through the database;
- `files.py`: the input, output and error files, through the Files API.
"""
