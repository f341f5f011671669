"""Runs ``-c CODE ARGS``, ``-m MODULE ARGS`` or ``SCRIPT ARGS`` like ``python``
does, then writes this process's own peak RSS to ``$BENCH_RSS_FILE``.

Why not ``ru_maxrss``: Linux carries the high-water mark of the memory a
process had before ``exec`` into the new program's ``ru_maxrss``, so a child
of a big benchmark driver reports at least the driver's size. ``VmHWM`` in
/proc/self/status belongs to the current address space only. Processes this
one waits for (e.g. DirectRunner multi_processing workers) are added as the
largest of their ``ru_maxrss`` (RUSAGE_CHILDREN), which is an upper bound.
"""
import atexit
import os
import resource
import runpy
import sys


def _report() -> None:
  path = os.environ.get('BENCH_RSS_FILE')
  if not path:
    return
  hwm_kb = 0
  with open('/proc/self/status') as handle:
    for line in handle:
      if line.startswith('VmHWM:'):
        hwm_kb = int(line.split()[1])
  children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
  with open(path, 'w') as handle:
    handle.write(f'{hwm_kb} {children_kb}\n')


def main() -> None:
  atexit.register(_report)
  args = sys.argv[1:]
  # python puts the cwd (-c, -m) or the script's folder first, not this file's
  sys.path[0] = os.getcwd()
  if args[0] == '-c':
    sys.argv = ['-c', *args[2:]]
    exec(compile(args[1], '<string>', 'exec'), {'__name__': '__main__'})
  elif args[0] == '-m':
    sys.argv = [args[1], *args[2:]]
    runpy.run_module(args[1], run_name='__main__', alter_sys=True)
  else:
    sys.argv = args
    sys.path[0] = os.path.dirname(os.path.abspath(args[0]))
    runpy.run_path(args[0], run_name='__main__')


if __name__ == '__main__':
  main()
