// Actions and look-ups more than one page uses.
import { ApiError, all, post } from "./api.js";

export const TERMINAL = new Set(["succeeded", "failed", "canceled"]);

// An admin cancels another user's job through the admin route; a gateway without that route
// (404/405) is asked through the owner's route, which cancels the admin's own jobs.
export async function cancelJob(job, me) {
  const id = encodeURIComponent(job.id);
  const own = !job.user_id || job.user_id === me.id;
  if (me.is_admin && !own) {
    try {
      return await post(`/v1/admin/jobs/${id}/cancel`);
    } catch (err) {
      if (!(err instanceof ApiError) || (err.status !== 404 && err.status !== 405)) throw err;
    }
  }
  return post(`/v1/jobs/${id}/cancel`);
}

// Admins see user ids on jobs: their names, read once per page view.
export async function userNames() {
  const users = await all("/v1/admin/users");
  return new Map(users.map((u) => [u.id, u.name]));
}
