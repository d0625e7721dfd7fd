/**
 * The one base of every command: shared flags with their environment twins, the progress
 * reporter, and the single place where errors are rendered (one line on stderr, a distinct
 * exit code). Commands parse flags and call one service function; nothing else.
 */
import {Command, Flags, Interfaces} from '@oclif/core'
import {ExitCode, HolyshipError, classify} from '../errors.js'
import {Progress, TtyProgress} from '../progress.js'
import {setPasswordFile} from '../repo/keys.js'

export type BaseFlags<T extends typeof Command> = Interfaces.InferredFlags<(typeof BaseCommand)['baseFlags'] & T['flags']>

export abstract class BaseCommand<T extends typeof Command> extends Command {
  static override enableJsonFlag = true

  static override baseFlags = {
    repo: Flags.string({description: 'repository directory', env: 'HOLYSHIP_REPO', helpGroup: 'GLOBAL'}),
    catalogue: Flags.string({description: 'SQLite catalogue file', env: 'HOLYSHIP_CATALOGUE', helpGroup: 'GLOBAL'}),
    quiet: Flags.boolean({char: 'q', description: 'no progress output', env: 'HOLYSHIP_QUIET', helpGroup: 'GLOBAL'}),
    // never the passphrase itself on the command line (it would show in ps and shell history)
    'password-file': Flags.string({
      description: 'file holding the passphrase of an encrypted repository (else HOLYSHIP_PASSWORD, else a prompt on a terminal)',
      env: 'HOLYSHIP_PASSWORD_FILE',
      helpGroup: 'GLOBAL',
    }),
  }

  protected flags!: BaseFlags<T>
  protected args!: Interfaces.InferredArgs<T['args']>
  /** the arguments as given, flags left out (all of them for a command that is not strict) */
  protected positional: string[] = []

  public override async init(): Promise<void> {
    await super.init()
    const {args, flags, argv} = await this.parse({
      flags: this.ctor.flags,
      baseFlags: (super.ctor as typeof BaseCommand).baseFlags,
      enableJsonFlag: this.ctor.enableJsonFlag,
      args: this.ctor.args,
      strict: this.ctor.strict,
    })
    this.flags = flags as BaseFlags<T>
    this.args = args as Interfaces.InferredArgs<T['args']>
    this.positional = argv as string[]
    setPasswordFile(this.flags['password-file'])
  }

  /** progress on a TTY only, never with --json or --quiet */
  protected progress(): Progress {
    return TtyProgress.forStream(process.stderr, !this.jsonEnabled() && !this.flags.quiet)
  }

  /** print a line for humans (nothing with --json: the returned value is printed instead) */
  protected say(line: string): void {
    if (!this.jsonEnabled()) this.log(line)
  }

  protected override async catch(err: Error & {exitCode?: number; oclif?: {exit?: number}}): Promise<unknown> {
    const known = classify(err)
    if (known) return this.fail(known)
    // oclif's own parse errors (unknown flag, missing argument): usage errors
    if (err.oclif?.exit !== undefined || /Unexpected argument|Missing required|Nonexistent flag|Expected --|Missing \d+ required arg/.test(err.message)) {
      return this.fail(new HolyshipError('USAGE', oneLine(err.message)))
    }
    process.stderr.write(`holyship: internal error: ${err.message.split('\n')[0]}\n`)
    if (process.env.DEBUG) process.stderr.write(`${err.stack}\n`)
    else process.stderr.write('this is a bug in holyship; run with DEBUG=holyship:* for details\n')
    return this.exit(ExitCode.BUG)
  }

  /**
   * a warning: one line on stderr, shaped like an error's (oclif's own warn wraps a long
   * line at the terminal's width and prefixes it with a symbol), with --json too
   */
  public override warn(input: string | Error): string | Error {
    const text = typeof input === 'string' ? input : input.message
    process.stderr.write(`holyship: warning: ${text.replace(/\s*\n\s*/g, ' ')}\n`)
    return input
  }

  /** a command is over: stop the blob workers it may have started, so nothing keeps the process alive */
  protected override async finally(err: Error | undefined): Promise<unknown> {
    const {closeSharedPools} = await import('../repo/blob-pool.js')
    await closeSharedPools()
    return super.finally(err)
  }

  private fail(e: HolyshipError): never {
    process.stderr.write(`holyship: error: ${e.message}${e.hint ? ` (${e.hint})` : ''}\n`)
    if (this.jsonEnabled()) process.stderr.write(JSON.stringify({error: {code: e.code, exitCode: e.exitCode, message: e.message}}) + '\n')
    if (process.env.DEBUG && e.cause) process.stderr.write(`${(e.cause as Error).stack ?? e.cause}\n`)
    return this.exit(e.exitCode)
  }
}

/** oclif's multi-line parse errors, folded into one line */
function oneLine(message: string): string {
  return message
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !/^The following error|^See more help with/.test(l))
    .join('; ')
}
