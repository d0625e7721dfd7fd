/**
 * restoreToDir in ANOTHER process (the tests start it as an unprivileged user). argv[2] is
 * JSON: {repo, tree, target, overwrite?}. Prints the result as JSON on stdout, or `ERROR <code> <message>`.
 */
import {restoreToDir} from '../../../src/archive/restorer.js'
import {LocalBackend} from '../../../src/backend/local.js'
import {Repository} from '../../../src/repo/repository.js'

const args = JSON.parse(process.argv[2]) as {repo: string; tree: string; target: string; overwrite?: boolean}
try {
  const repo = await Repository.open(new LocalBackend(args.repo))
  process.stdout.write(JSON.stringify(await restoreToDir(repo, args.tree, '', args.target, {overwrite: args.overwrite})) + '\n')
} catch (e) {
  process.stdout.write(`ERROR ${(e as {code?: string}).code} ${(e as Error).message}\n`)
}
