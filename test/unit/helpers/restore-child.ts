/**
 * restoreToDir in ANOTHER process (the tests start it as an unprivileged user). argv[2] is
 * JSON: {repo, tree, target, overwrite?, appear?}; `appear`: once the first bytes are written,
 * something else makes the target (a directory with a file), as a racing writer would.
 * Prints the result as JSON on stdout, or `ERROR <code> <message>`.
 */
import {existsSync, mkdirSync, writeFileSync} from 'node:fs'
import {restoreToDir} from '../../../src/archive/restorer.js'
import {LocalBackend} from '../../../src/backend/local.js'
import {Repository} from '../../../src/repo/repository.js'

const args = JSON.parse(process.argv[2]) as {repo: string; tree: string; target: string; overwrite?: boolean; appear?: boolean}
try {
  const repo = await Repository.open(new LocalBackend(args.repo))
  const r = await restoreToDir(repo, args.tree, '', args.target, {
    overwrite: args.overwrite,
    onBytes: () => {
      if (!args.appear || existsSync(args.target)) return
      mkdirSync(args.target)
      writeFileSync(`${args.target}/theirs`, 'theirs')
    },
  })
  process.stdout.write(JSON.stringify(r) + '\n')
} catch (e) {
  process.stdout.write(`ERROR ${(e as {code?: string}).code} ${(e as Error).message}\n`)
}
