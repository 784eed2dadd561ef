import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { PerlWorker } from './perl-worker.js'
import type { CommandResult } from './command.js'

// Runs the host's tools (ip, mount, crun) through one long-lived launcher process instead of
// forking the agent for each. Node forks the whole calling process to spawn a child; in the agent
// (100+ MB) that fork took ~1.6 ms of main-thread CPU per tool, half of all the agent's CPU per
// Machine create (measured with --cpu-prof: ChildProcess.spawn at 796 of 1635 busy ms).
//
// The launcher is a few lines of Perl (perl-base is Essential on Debian: every machine has it),
// not bash: bash needs two forks per background command (a subshell to report the exit status
// and one for the command), Perl forks once — it execs the tool in the child and learns its
// status from waitpid after a SIGCHLD — and no shell quoting is involved at all.
//
// Protocol: each request is NUL-separated fields — id, cwd, stdin path, stdout path, stderr
// path, fd-3 path (each possibly empty), the number of env pairs and the pairs, the argc and the
// argv. The launcher answers `P <id> <pid>` once the tool runs (for timeouts) and `D <id>
// <status>` when it ends (128+N when killed by signal N). Output goes to files in a private
// tmpfs directory.

const LAUNCHER = String.raw`
use strict; use warnings; use POSIX (); use IO::Select; use Fcntl;
$| = 1;
my (%ids, $buf, @fields);
$buf = '';
pipe(my $wake_r, my $wake_w) or die "pipe: $!";
$SIG{CHLD} = sub { syswrite($wake_w, 'x') };
my $select = IO::Select->new(\*STDIN, $wake_r);
sub reap {
  while ((my $pid = waitpid(-1, POSIX::WNOHANG())) > 0) {
    my $id = delete $ids{$pid};
    my $status = ($? & 127) ? 128 + ($? & 127) : ($? >> 8);
    print "D $id $status\n" if defined $id;
  }
}
my %paths;
# Where a command is, looked up in PATH once (a long PATH costs every exec a string of ENOENTs).
sub resolve {
  my ($name) = @_;
  return $name if index($name, '/') >= 0;
  return $paths{$name} if exists $paths{$name};
  for my $dir (split(/:/, $ENV{PATH} // '/usr/sbin:/usr/bin:/sbin:/bin')) {
    my $candidate = "$dir/$name";
    return $paths{$name} = $candidate if -f $candidate && -x _;
  }
  return $name;
}
sub launch {
  my ($id, $cwd, $in, $out, $err, $fd3, $env, $argv) = @_;
  my $path = resolve($argv->[0]);
  my $pid = fork();
  if (!defined $pid) { print "D $id 126\n"; return }
  if ($pid == 0) {
    $SIG{CHLD} = 'DEFAULT';
    open(STDIN, '<', length $in ? $in : '/dev/null') or POSIX::_exit(126);
    open(STDOUT, '>', $out) or POSIX::_exit(126);
    open(STDERR, '>', $err) or POSIX::_exit(126);
    if (length $cwd && !chdir $cwd) { print STDERR "cannot cd to $cwd: $!\n"; POSIX::_exit(126) }
    if (length $fd3) {
      open(my $f, '>', $fd3) or POSIX::_exit(126);
      POSIX::dup2(fileno($f), 3) if fileno($f) != 3;
      fcntl(3, F_SETFD, 0);
    }
    while (my ($k, $v) = splice(@$env, 0, 2)) { $ENV{$k} = $v }
    { no warnings 'exec'; exec { $path } @$argv; }
    print STDERR "cannot run $argv->[0]: $!\n";
    POSIX::_exit(127);
  }
  $ids{$pid} = $id;
  print "P $id $pid\n";
}
sub parse {
  while (1) {
    return if @fields < 7;
    my $nenv = $fields[6];
    return if @fields < 8 + 2 * $nenv;
    my $argc = $fields[7 + 2 * $nenv];
    return if @fields < 8 + 2 * $nenv + $argc;
    my @head = splice(@fields, 0, 7);
    my @env = splice(@fields, 0, 2 * $nenv);
    shift @fields;
    my @argv = splice(@fields, 0, $argc);
    launch(@head[0..5], \@env, \@argv);
  }
}
while (1) {
  for my $fh ($select->can_read) {
    if ($fh == $wake_r) { sysread($wake_r, my $x, 4096); reap(); next }
    my $n = sysread(STDIN, my $chunk, 65536);
    if (!defined $n) { next if $!{EINTR}; exit 0 }
    exit 0 if $n == 0;
    $buf .= $chunk;
    my @parts = split(/\0/, $buf, -1);
    $buf = pop @parts;
    push @fields, @parts;
    parse();
  }
}
`

export class CommandShell {
  private readonly worker = new PerlWorker('command launcher', LAUNCHER, new Set(['D']))
  private readonly dir: string
  private dirMade = false

  constructor(dir = `/dev/shm/hangar-commands-${process.pid}`) {
    this.dir = dir
  }

  /** `env` adds variables for this command only; `fd3` opens that file as the command's fd 3. */
  async run(command: string, args: readonly string[], options: { input?: string | Buffer; cwd?: string; timeoutMs?: number; maxOutputBytes?: number; env?: Record<string, string>; fd3?: string } = {}): Promise<CommandResult> {
    const env = Object.entries(options.env ?? {})
    for (const [k] of env) if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) throw new Error(`bad env name ${k}`)
    const argv = [command, ...args]
    if ([options.cwd ?? '', options.fd3 ?? '', ...env.flat(), ...argv].some((field) => field.includes('\0'))) throw new Error(`a NUL byte in the arguments of ${command}`)
    if (!this.dirMade) { mkdirSync(this.dir, { recursive: true, mode: 0o700 }); this.dirMade = true }
    let base = ''
    let pid: number | undefined
    let timer: NodeJS.Timeout | undefined
    const { reply } = this.worker.request((id) => {
      base = join(this.dir, String(id))
      let stdin = ''
      if (options.input !== undefined) {
        writeFileSync(`${base}.in`, options.input)
        stdin = `${base}.in`
      }
      return [String(id), options.cwd ?? '', stdin, `${base}.out`, `${base}.err`, options.fd3 ?? '', String(env.length), ...env.flat(), String(argv.length), ...argv].join('\0') + '\0'
    }, (interim) => { if (interim.kind === 'P') pid = Number(interim.rest) })
    if (options.timeoutMs) timer = setTimeout(() => { if (pid) { try { process.kill(pid, 'SIGKILL') } catch { /* gone */ } } }, options.timeoutMs)
    try {
      const done = await reply
      const max = options.maxOutputBytes ?? 4 * 1024 * 1024
      const read = (suffix: string) => { try { return readFileSync(`${base}.${suffix}`).subarray(0, max).toString() } catch { return '' } }
      return { code: Number(done.rest), signal: null, stdout: read('out'), stderr: read('err') }
    } finally {
      if (timer) clearTimeout(timer)
      for (const suffix of ['in', 'out', 'err']) rmSync(`${base}.${suffix}`, { force: true })
    }
  }

  close(): void {
    this.worker.close()
    rmSync(this.dir, { recursive: true, force: true })
    this.dirMade = false
  }
}

let shared: CommandShell | undefined

/** Routes `runCommand` calls (those without their own env) through one launcher process (the agent turns this on). */
export function enableCommandShell(): CommandShell {
  // Directories of shells whose process was killed (kill -9 leaves them): remove them.
  try {
    for (const name of readdirSync('/dev/shm')) {
      const pid = Number(/^hangar-commands-(\d+)$/.exec(name)?.[1])
      if (!pid || pid === process.pid) continue
      try { process.kill(pid, 0) } catch { rmSync(join('/dev/shm', name), { recursive: true, force: true }) }
    }
  } catch { /* no /dev/shm */ }
  shared ??= new CommandShell()
  process.once('exit', () => shared?.close())
  return shared
}

export function commandShell(): CommandShell | undefined {
  return shared
}
