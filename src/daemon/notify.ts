/**
 * sd_notify(3) readiness. Node cannot send on a unix datagram socket, so the message goes through
 * systemd's own `systemd-notify`, with `--pid` naming us as the sender (the unit sets
 * NotifyAccess=all, because without CAP_SYS_ADMIN the credentials carry systemd-notify's PID).
 */
import { execFile } from 'node:child_process';
import type { Logger } from '../log.js';

export function notify(
  state: 'READY=1' | 'STOPPING=1' | `STATUS=${string}`,
  logger: Logger,
  env = process.env,
): Promise<void> {
  if (!env.NOTIFY_SOCKET) return Promise.resolve();
  return new Promise((resolve) => {
    execFile(
      'systemd-notify',
      [`--pid=${process.pid}`, state],
      { env, timeout: 5_000 },
      (err, _out, stderr) => {
        if (err) logger.warn(`systemd-notify ${state} failed: ${stderr.trim() || err.message}`);
        resolve();
      },
    );
  });
}
